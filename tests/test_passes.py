"""No wasted passes (issue #11, item 4): with one optimizer step per rollout batch (1 epoch × 1 minibatch)
the training forward stands in for the behaviour pass of the policy.

* the shortcut changes nothing but float noise: `lco train` with it and with the old behaviour pass
  (forced by patching `Update.behaviour_from_training_forward`) ends at the same parameters and logs the
  same telemetry under the same keys;
* the model forwards per training step are pinned (docs/scale.md, "Forward passes per step").
"""
from __future__ import annotations

import contextlib
import shutil

import pytest
import torch
from conftest import invoke, read_jsonl
from safetensors.torch import load_file

from lco_cli.engines.chunked import (TokenTelemetry, VocabHead, chunked_entropy_and_logprobs, chunked_selective_logprobs,
                                     chunked_token_loss)
from lco_cli.recipes import train as train_recipe
from lco_cli.rl.update import Update

#: telemetry that came from the behaviour pass and now comes from the training forward
BEHAVIOUR_KEYS = ("entropy", "sampled_prob", "kl_ref")


def train(runner, *overrides, run="run"):
    return invoke(runner, "train", "fast.yaml", "--run-dir", run, "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl",
                  "train.eval_every=0", *overrides)


def old_path(monkeypatch):
    """Force the behaviour pass of the policy (the code path before the shortcut)."""
    monkeypatch.setattr(Update, "behaviour_from_training_forward", lambda self: False)


SINGLE_STEP = {
    "grpo": ["train.algo=grpo"],
    "reinforce": ["train.algo=reinforce"],
    "gkd": ["train.algo=gkd"],
    "lco": ["train.algo=lco", "train.minibatches=1"],
    "lco-sparse": ["train.algo=lco", "train.minibatches=1", "train.advantage=sparse", "train.advantage_norm=batch"],
}


@pytest.mark.parametrize("name", sorted(SINGLE_STEP))
def test_single_step_shortcut_leaves_the_training_unchanged(runner, run_dir, workdir, monkeypatch, name):
    # RM rewards: the untrained policy is never right, so verifier rewards would give zero advantages.
    args = [*SINGLE_STEP[name], "train.steps=2", "train.reward=rm", "train.micro_batch_size=4"]
    shutil.copytree(run_dir, workdir / "run_old")
    assert train(runner, *args).exit_code == 0
    with monkeypatch.context() as m:
        old_path(m)
        assert train(runner, *args, run="run_old").exit_code == 0
    new_w = load_file(str(run_dir / "train/final/model.safetensors"))
    old_w = load_file(str(workdir / "run_old/train/final/model.safetensors"))
    # Tolerance: the behaviour pass and the training forward run the same float32 kernels on the same
    # inputs, so log π_old is the detached log π_θ (measured: max |Δθ| = 0.0 on CPU for all five runs); the
    # only freedom is a reduction order chosen differently with/without grad (GPU kernels, ~1e-7 relative
    # per op), carried through two Adam steps of lr 1e-3 (each moves an element by ~lr): 1e-6 absolute is
    # far below one step and far above that noise.
    for k in new_w:
        torch.testing.assert_close(new_w[k], old_w[k], rtol=0, atol=1e-6, msg=lambda s: f"{name} {k}: {s}")
    new_rows, old_rows = (read_jsonl(p / "train/metrics.jsonl") for p in (run_dir, workdir / "run_old"))
    for new, old in zip(new_rows, old_rows, strict=True):
        assert set(new) == set(old), set(new) ^ set(old)
        for k in (*BEHAVIOUR_KEYS, "loss", "grad_norm", "reward_mean"):
            # the same float32 sums over a few dozen tokens: 1e-5 relative
            assert new[k] == pytest.approx(old[k], rel=1e-5, abs=1e-7), (name, k)
    if name == "grpo":  # π_old = π_θ: every ratio is exactly 1 in value
        assert all(r["ratio_min"] == r["ratio_max"] == 1.0 for r in new_rows)


def test_engines_fill_the_behaviour_telemetry_from_their_own_logits():
    """Both loss engines write the entropy and log π(a_t) a separate no-grad pass computes, through slices
    of the whole batch's buffers, and leave the loss and gradients as they were.

    Tolerance: the same formulas on the same float32 logits, up to the matmul's last bit (a chunk's
    rows at another address or row count may take another SIMD path: measured 1 ulp, 4.8e-7 at |x| ≈ 4),
    so a few ulp: rtol 1e-6."""
    g = torch.Generator().manual_seed(0)
    n, h, v = 11, 6, 13
    hidden, weight = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g)
    ids = torch.randint(0, v, (n,), generator=g)
    parts = (slice(0, 5), slice(5, n))  # two micro-batches, chunk size 4 (a ragged last chunk)
    # the behaviour pass over the same micro-batches (a matmul's rounding depends on its row count)
    ent, lp = (torch.cat(x) for x in zip(*(chunked_entropy_and_logprobs(VocabHead(hidden[sl], weight), ids[sl], 4)
                                           for sl in parts)))
    whole = TokenTelemetry.empty(n, torch.float32, "cpu")
    for sl in parts:
        hd = hidden[sl].clone().requires_grad_(True)
        out = chunked_selective_logprobs(VocabHead(hd, weight), ids[sl], 4, tokens=whole[sl])
        ref = chunked_selective_logprobs(VocabHead(hd, weight), ids[sl], 4)
        assert torch.equal(out, ref)
        (gt,) = torch.autograd.grad(out.sum(), hd)
        (gr,) = torch.autograd.grad(ref.sum(), hd)
        assert torch.equal(gt, gr)
    close = dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(whole.entropy, ent, **close)
    torch.testing.assert_close(whole.logprobs, lp, **close)
    ent, lp = chunked_entropy_and_logprobs(VocabHead(hidden, weight), ids, 4)
    tokens = TokenTelemetry.empty(n, torch.float32, "cpu")
    loss, _ = chunked_token_loss(VocabHead(hidden, weight), lambda z, sampled_ids: z.logsumexp(-1), torch.ones(n), 4,
                                 targets=lambda sl: {"sampled_ids": ids[sl]}, tokens=tokens)
    torch.testing.assert_close(tokens.entropy, ent, **close)
    torch.testing.assert_close(tokens.logprobs, lp, **close)
    with pytest.raises(TypeError):
        whole[torch.arange(3)]  # a copy would lose the writes


# --------------------------------------------------------------------------- forward counts


class Counter:
    """Forward calls per model, split by whether autograd records them (training forward vs no-grad pass)."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def hook(self, name):
        def pre(module, args, kwargs):
            key = f"{name}:{'grad' if torch.is_grad_enabled() else 'nograd'}"
            self.calls[key] = self.calls.get(key, 0) + 1
        return pre

    def watch(self, name, module):
        module.register_forward_pre_hook(self.hook(name), with_kwargs=True)


def counted_env(counter):
    """`TrainEnv` for the train recipe that hooks the models the Update runs: the policy and reference
    (`HiddenStatesLM`: the training/behaviour/reference passes, not generation, which calls the inner LM),
    and the advantage source's decoders (φ_DPO, φ_ref: each of their forwards goes through them)."""
    real = train_recipe.TrainEnv

    def make(cfg, policy, reference, reward, *args, **kw):
        counter.watch("policy", policy)
        if reference is not None:
            counter.watch("reference", reference)
        for name in ("rm", "ref", "model"):
            model = getattr(reward, name, None)
            if model is not None:
                counter.watch("rm" if name != "ref" else "rm_ref", getattr(model, model.base_model_prefix))
        return real(cfg, policy, reference, reward, *args, **kw)

    return make


#: one step: 4 prompts × 2 samples = 8 rows, micro-batches of 4 rows → M = 2 micro-batches per pass over the
#: batch; LCO's default 4 minibatches of 2 rows → 4 training micro-batches. Counts per training step.
FORWARDS = {
    # GRPO 1×1: one training forward per micro-batch; the reference for the k3 term (and kl_ref).
    "grpo": (["train.algo=grpo"], {"policy:grad": 2, "reference:nograd": 2}),
    # β_KL = 0: no KL term, the reference still runs for the kl_ref telemetry (docs/scale.md).
    "grpo-beta0": (["train.algo=grpo", "train.algo_args.beta=0.0"], {"policy:grad": 2, "reference:nograd": 2}),
    # ... unless kl_ref is off: then no reference is loaded at all, the count TRL 1.16 has at β = 0.
    "grpo-beta0-nokl": (["train.algo=grpo", "train.algo_args.beta=0.0", "train.telemetry.kl_ref=false"], {"policy:grad": 2}),
    # β_KL > 0 reads the reference in the loss: kl_ref off changes nothing.
    "grpo-nokl": (["train.algo=grpo", "train.telemetry.kl_ref=false"], {"policy:grad": 2, "reference:nograd": 2}),
    "lco-1x1-nokl": (["train.algo=lco", "train.minibatches=1", "train.telemetry.kl_ref=false"],
                     {"policy:grad": 2, "rm:nograd": 2, "rm_ref:nograd": 2}),
    # LCO defaults (1 epoch × 4 minibatches): the behaviour pass keeps z_old frozen over the 4 steps.
    "lco": (["train.algo=lco"], {"policy:nograd": 2, "policy:grad": 4, "reference:nograd": 2, "rm:nograd": 2,
                                 "rm_ref:nograd": 2}),
    "lco-1x1": (["train.algo=lco", "train.minibatches=1"], {"policy:grad": 2, "reference:nograd": 2, "rm:nograd": 2,
                                                            "rm_ref:nograd": 2}),
    # the old path, for the record: one more no-grad policy forward per micro-batch
    "grpo-old": (["train.algo=grpo"], {"policy:nograd": 2, "policy:grad": 2, "reference:nograd": 2}),
}


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_forward_passes_per_step(runner, run_dir, monkeypatch, name):
    """Model forwards in one training step (rollout generation excluded: it runs the inner LM with a KV cache).

    M = micro-batches of the rollout batch (2 here), T = training micro-batches over all epochs and
    minibatches (T = M for 1×1; 4 here for LCO's 4 minibatches of 2 rows):

    | run                                    | policy, grad | policy, no grad | reference  | φ_DPO + φ_ref |
    |---|---|---|---|---|
    | GRPO 1×1, β_KL = 0.04                  | M            | 0               | M          | 0             |
    | GRPO 1×1, β_KL = 0                     | M            | 0               | M (kl_ref) | 0             |
    | GRPO 1×1, β_KL = 0, kl_ref off          | M            | 0               | none loaded | 0            |
    | GRPO 1×1, β_KL = 0.04, kl_ref off       | M            | 0               | M          | 0             |
    | LCO 1×1, kl_ref off                    | M            | 0               | none loaded | M + M        |
    | GRPO 1×1 before the shortcut           | M            | M               | M          | 0             |
    | LCO defaults (1 epoch × 4 minibatches) | T            | M               | M          | M + M         |
    | LCO 1×1                                | M            | 0               | M          | M + M         |
    """
    overrides, expected = FORWARDS[name]
    counter = Counter()
    monkeypatch.setattr(train_recipe, "TrainEnv", counted_env(counter))
    with monkeypatch.context() if name.endswith("-old") else contextlib.nullcontext() as m:
        if m is not None:
            old_path(m)
        res = train(runner, *overrides, "train.steps=1", "train.micro_batch_size=4")
    assert res.exit_code == 0, res.output
    assert counter.calls == expected
    row = read_jsonl(run_dir / "train/metrics.jsonl")[-1]
    no_reference = "reference:nograd" not in expected
    assert all(k in row for k in BEHAVIOUR_KEYS if not (k == "kl_ref" and no_reference))
    assert ("kl_ref" in row) is not no_reference  # absent, not faked, when no reference was loaded


@pytest.mark.parametrize("algo", ["reinforce", "dapo", "gspo", "gkd", "minillm", "lco", "ppo"])
def test_kl_ref_off_loads_no_reference_where_no_loss_reads_it(runner, run_dir, monkeypatch, algo):
    """`train.telemetry.kl_ref: false`: the algorithms without a KL term train with no reference model in
    memory and log no `kl_ref`; PPO (KL-shaped rewards) still loads it and logs it."""
    seen = []
    real = train_recipe.TrainEnv
    monkeypatch.setattr(train_recipe, "TrainEnv", lambda cfg, policy, reference, *a, **kw: seen.append(reference) or real(cfg, policy, reference, *a, **kw))
    spp = ["train.samples_per_prompt=2"] if algo in ("dapo", "gspo") else []
    res = train(runner, f"train.algo={algo}", *spp, "train.steps=2", "train.telemetry.kl_ref=false")
    assert res.exit_code == 0, res.output
    rows = [r for r in read_jsonl(run_dir / "train/metrics.jsonl") if r.get("step", 0) > 0 and "loss" in r]
    assert rows and all(("kl_ref" in r) is (algo == "ppo") for r in rows)
    assert (seen[0] is None) is (algo != "ppo")
