"""The loss `lco train` runs (`LCOUpdate.prepare` + `micro_loss`, i.e. `losses.lco_chunked.lco_chunked_loss`)
equals the reference `losses.lco.lco_loss` on materialised logits, on a real rollout batch of the tiny
SFT policy scored by the tiny DPO RM, in float64: loss and parameter gradient summed over micro-batches,
with z_old frozen while the parameters move (several epochs), β_neg, clipping, both top-k supports —
in one process, and over 2 processes (`accelerate launch`, gloo): each process's half of the batch through
the loop's DDP policy and `Normaliser`, the all-reduced gradient against the reference on the whole batch.

Plus the authors' support (`train.advantage_support: authors`) by hand-derived numbers and against a
literal port of homzer/llama-rlhf's `src/ppo/trainer_lco.py` / `src/utils.create_lco_log_target`.
"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import invoke, read_jsonl
from lco_path_shared import load_prepared, move_parameters, path_config

from lco_cli.losses.lco import (
    authors_loss_and_grad,
    dense_advantage,
    lco_loss,
    select_beta,
    sparse_advantage,
    standardise_on_support,
)

# float64 models, but Qwen2's RMSNorm and attention softmax compute in float32 inside (`.to(torch.float32)`),
# so the same rows forwarded in micro-batches of 3 (shorter padding) and as one batch differ at float32
# rounding: ~1e-8 relative on the loss (measured 7e-9), ~1e-7 on a gradient tensor's norm; the loss
# engines themselves differ only in float64 summation order. The bounds are 100x that, while a wrong z*,
# β or support moves the loss and gradients by 1e-3 or more. Gradients are compared per parameter tensor
# by ‖Δg‖ / ‖g‖: elementwise, entries near 0 carry only that float32 noise.
RTOL, GRAD_RTOL = 1e-6, 1e-5


# --------------------------------------------------------------------------- a real rollout batch


@pytest.fixture(scope="module")
def setup(prepared):
    from lco_cli.engines.generation import make_engine
    from lco_cli.rl.registry import get_algo
    from lco_cli.rl.sampling import Sampler
    from lco_cli.runtime import models
    from lco_cli.runtime.optim import make_accelerator
    from lco_cli.tasks import get_task

    s = load_prepared(prepared)
    p = s["preset"]
    cfg = get_algo("lco").resolve(p.train)
    tok = models.load_tokenizer(s["sft"], p.model)
    acc = make_accelerator("no", 0)
    task = get_task(p.task, p.seed)
    torch.manual_seed(0)
    sampler = Sampler(cfg, make_engine("hf", s["policy"].lm, tok, 16), s["policy"], tok, task, s["reward"], acc, p.seed)
    batch = sampler.sample(task.train[:4], cfg.samples_per_prompt)
    assert batch.rewards.unique().numel() > 1  # real, varied RM rewards (both advantage signs)
    return {**s, "acc": acc, "batch": batch}


def training_path(s, **train):
    """Loss and parameter gradient of the training path after the parameters moved (z_old frozen)."""
    from lco_cli.rl.lco import LCOUpdate
    from lco_cli.rl.update import MicroBatch, Normaliser, TrainEnv, row_chunks

    cfg = path_config(s["preset"].train, **train)
    policy, batch = s["policy"], s["batch"]
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    env = TrainEnv(cfg, policy, s["reference"], s["reward"], s["acc"], chunk_size=5)
    update = LCOUpdate(cfg, env)
    prep, _ = update.prepare(batch)
    move_parameters(policy)  # "later epochs": the parameters moved since prepare; z_old must not
    moved = {k: v.clone() for k, v in policy.state_dict().items()}
    policy.zero_grad(set_to_none=True)
    norm = Normaliser(global_tokens=float(batch.response_len.sum()), global_seqs=float(batch.size), world=1)
    total = 0.0
    for rows in row_chunks(batch.size, cfg.micro_batch_size):
        view = MicroBatch.of(batch, rows)
        loss, _ = update.micro_loss(batch, view, prep.take(view), norm)
        loss.backward()
        total += float(loss.detach())
    grads = {n: q.grad.clone() for n, q in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    return total, grads, state, moved, prep


def logits_of(model, batch) -> torch.Tensor:
    """[N, V] logits at the response tokens' prediction positions (materialised)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return out[:, :-1][batch.targets]


def raw_dense_advantage(s, advantage: str) -> torch.Tensor:
    batch, reward = s["batch"], s["reward"]
    with torch.no_grad():
        adv = torch.log_softmax(logits_of(reward.rm, batch), -1)
        if advantage == "dpo":
            adv = adv - torch.log_softmax(logits_of(reward.ref, batch), -1)
    return adv


def group_normalised(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(r − mean_g) / (std_g + 1e-4), the `group` normalisation of sparse advantages, by hand."""
    out = torch.empty_like(rewards, dtype=torch.float64)
    for gid in group.unique().tolist():
        r = rewards[group == gid].double()
        out[group == gid] = (r - r.mean()) / (r.std() + 1e-4)
    return out


def batch_normalised(rewards: torch.Tensor) -> torch.Tensor:
    """(r − mean) / (std + 1e-4) over the whole batch, the `batch` normalisation of sparse advantages, by hand."""
    r = rewards.double()
    return (r - r.mean()) / (r.std() + 1e-4)


def logits_before_and_after(policy, batch, state, moved):
    """(z_old from the pre-update parameters, no grad; z_θ from the moved ones, with grad)."""
    policy.load_state_dict(state)
    with torch.no_grad():
        z_old = logits_of(policy.lm, batch)
    policy.load_state_dict(moved)
    return z_old, logits_of(policy.lm, batch)


def loss_and_grads(policy, loss, state):
    """(loss value, parameter gradients of `loss`), then the pre-update parameters back in place."""
    policy.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: q.grad.clone() for n, q in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    policy.load_state_dict(state)
    return float(loss.detach()), grads


def reference(s, state, moved, kind, advantage, beta=1.0, beta_neg=None, clip=None, topk=None, center=True, norm="group"):
    """lco_loss on materialised float64 logits: z_old from the pre-update parameters, z_θ from the moved ones."""
    policy, batch = s["policy"], s["batch"]
    z_old, z = logits_before_and_after(policy, batch, state, moved)
    sampled = batch.sampled_ids
    if advantage == "sparse":
        normalised = group_normalised(batch.rewards, batch.group) if norm == "group" else batch_normalised(batch.rewards)
        seq = normalised[batch.token_seq]
        adv = dense_advantage(sparse_advantage(sampled, seq, z.shape[-1]), center=center, clip=clip)
    else:
        adv = dense_advantage(raw_dense_advantage(s, advantage), center=center, clip=clip, topk=topk, old_logits=z_old)
    b = select_beta(beta, beta_neg, adv.gather(-1, sampled[:, None]).squeeze(-1)) if beta_neg else beta
    loss = lco_loss(z, z_old, adv, b, kind)
    return loss_and_grads(policy, loss, state)


def assert_same(got, want, case: str = "", rtol: float = RTOL, grad_rtol: float = GRAD_RTOL):
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert loss == pytest.approx(ref_loss, rel=rtol), case
    assert any(float(g.abs().max()) > 1e-6 for g in ref_grads.values()), case  # a gradient that can be wrong
    assert set(grads) == set(ref_grads), case
    for n, g in ref_grads.items():
        err = float((grads[n].double() - g).norm() / g.norm().clamp_min(1e-300))
        assert err < grad_rtol, f"{case} {n}: relative gradient error {err:.2e}"


@pytest.mark.parametrize("kind", ["kld", "mse", "lch"])
@pytest.mark.parametrize("advantage", ["dpo", "logprob", "sparse"])
@pytest.mark.parametrize("shaping", ["plain", "beta_neg+clip"])
def test_training_path_equals_the_reference_loss(setup, kind, advantage, shaping):
    opts = {"beta": 0.7} if shaping == "plain" else {"beta": 0.7, "beta_neg": 3.0, "clip": 0.5}
    train = {"objective": kind, "advantage": advantage, "advantage_norm": "group", "beta": opts["beta"],
             "beta_neg": opts.get("beta_neg"), "advantage_clip": opts.get("clip")}
    loss, grads, state, moved, prep = training_path(setup, **train)
    assert prep.old_head is not None  # several steps on the batch: z_old is frozen in `prepare`
    want = reference(setup, state, moved, kind, advantage, **opts)
    assert_same((loss, grads), want)


@pytest.mark.parametrize("kind", ["kld", "mse", "lch"])
def test_training_path_with_the_policy_topk_support(setup, kind):
    train = {"objective": kind, "advantage": "dpo", "advantage_support": "policy_topk", "advantage_topk": 4, "beta_neg": 2.0}
    loss, grads, state, moved, _ = training_path(setup, **train)
    assert_same((loss, grads), reference(setup, state, moved, kind, "dpo", beta=1.0, beta_neg=2.0, topk=4))


def authors_reference(s, state, moved, kind, advantage, k, beta):
    """homzer/llama-rlhf, ported literally on materialised logits (KLD: `ParallelLCOTrainerForDPORM` with
    `create_lco_log_target`; MSE/LCH: the `...ForQRM` trainers' support-only criterion, z_old as the base)."""
    policy, batch = s["policy"], s["batch"]
    old_logits, logits = logits_before_and_after(policy, batch, state, moved)
    ids = old_logits.topk(k, dim=-1).indices
    advantages = raw_dense_advantage(s, advantage).gather(-1, ids)
    if kind == "kld":
        advantages = (advantages / torch.std(advantages, dim=-1, keepdim=True)).nan_to_num(0.0)
        old_filled = torch.full_like(old_logits, -100.0).scatter(-1, ids, old_logits.gather(-1, ids))
        advantages_ = torch.full_like(old_logits, fill_value=-100.0)
        advantages_[torch.arange(advantages_.shape[0])[:, None], ids] = advantages
        log_target = torch.log_softmax(old_filled, dim=-1) + advantages_ / beta
        log_target = log_target - torch.logsumexp(log_target, dim=-1, keepdim=True)
        crit = torch.nn.KLDivLoss(reduction="none", log_target=True)
        loss = crit(torch.log_softmax(logits, dim=-1), target=log_target).sum(-1).mean()
    else:
        advantages = ((advantages - advantages.mean(-1, keepdim=True)) / advantages.std(-1, keepdim=True)).nan_to_num(0.0)
        x = logits.gather(-1, ids) - (old_logits.gather(-1, ids) + advantages / beta)
        per = x.square() if kind == "mse" else x.abs() + torch.log(1 + torch.exp(-2 * x.abs())) - math.log(2)
        loss = per.sum(-1).mean()
    return loss_and_grads(policy, loss, state)


@pytest.mark.parametrize("kind", ["kld", "mse", "lch"])
@pytest.mark.parametrize("advantage", ["dpo", "logprob"])
def test_training_path_with_the_authors_support_equals_their_code(setup, kind, advantage):
    train = {"objective": kind, "advantage": advantage, "advantage_support": "authors", "advantage_topk": 5, "beta": 2.0}
    loss, grads, state, moved, _ = training_path(setup, **train)
    # Their KLD does not centre A; ours does (normalisers cancel): the two π* differ only in the mass off
    # the support, ≤ V·e^-100 relative, far below float64 resolution — so the same tolerance holds.
    assert_same((loss, grads), authors_reference(setup, state, moved, kind, advantage, k=5, beta=2.0))


# --------------------------------------------------------------------------- over 2 processes (DDP)


def two_process_cases() -> dict[str, dict]:
    """name -> the train keys (to the worker) and the reference's arguments: every objective × advantage,
    plain and β_neg+clip; sparse with the `batch` normalisation (rewards gathered over the processes);
    the policy top-k and the authors' supports."""
    cases = {}
    for kind in ("kld", "mse", "lch"):
        for advantage in ("dpo", "logprob", "sparse"):
            for shaping, opts in (("plain", {"beta": 0.7}), ("beta_neg+clip", {"beta": 0.7, "beta_neg": 3.0, "clip": 0.5})):
                train = {"objective": kind, "advantage": advantage, "advantage_norm": "group", "beta": opts["beta"],
                         "beta_neg": opts.get("beta_neg"), "advantage_clip": opts.get("clip")}
                cases[f"{kind}/{advantage}/{shaping}"] = {"train": train, "ref": {"kind": kind, "advantage": advantage, **opts}}
    cases["kld/sparse/batch-norm"] = {
        "train": {"objective": "kld", "advantage": "sparse", "advantage_norm": "batch", "beta": 0.7},
        "ref": {"kind": "kld", "advantage": "sparse", "beta": 0.7, "norm": "batch"}}
    cases["mse/dpo/policy_topk"] = {
        "train": {"objective": "mse", "advantage": "dpo", "advantage_support": "policy_topk", "advantage_topk": 4,
                  "beta_neg": 2.0},
        "ref": {"kind": "mse", "advantage": "dpo", "beta": 1.0, "beta_neg": 2.0, "topk": 4}}
    cases["lch/dpo/authors"] = {
        "train": {"objective": "lch", "advantage": "dpo", "advantage_support": "authors", "advantage_topk": 5, "beta": 2.0},
        "authors": {"kind": "lch", "advantage": "dpo", "k": 5, "beta": 2.0}}
    for name in ("kld/dpo/plain", "mse/dpo/plain", "lch/dpo/plain", "kld/sparse/plain"):  # as `lco train` runs the tiny presets
        cases[f"{name}/float32"] = {"train": {**cases[name]["train"], "dtype": "float32"}, "ref": cases[name]["ref"]}
    return cases


@pytest.mark.slow
def test_training_path_over_two_processes_equals_the_reference_on_the_whole_batch(setup, prepared, tmp_path):
    """`accelerate launch --num_processes 2` (gloo): each process runs the loop's micro-batch losses on its half
    of the rollout batch through the `prepare`d DDP policy with the loop's `Normaliser`; the gradient DDP
    leaves on each replica, and the loss the loop reports, equal `lco_loss` on the whole batch's logits in
    float64 — with float64 models, and with the float32 models `lco train` runs the tiny presets in."""
    import json
    from pathlib import Path

    from conftest import free_port
    from launching import accelerate_launch

    batch, policy = setup["batch"], setup["policy"]
    half = batch.size // 2
    assert not set(batch.group[:half].tolist()) & set(batch.group[half:].tolist())  # whole groups per process, as in training
    cases = two_process_cases()
    torch.save(batch, tmp_path / "batch.pt")
    (tmp_path / "cases.json").write_text(json.dumps({name: c["train"] for name, c in cases.items()}))
    worker = Path(__file__).with_name("lco_path_worker.py")
    res = accelerate_launch("ddp", [str(worker), str(prepared), str(tmp_path / "batch.pt"), str(tmp_path / "cases.json"),
                                    str(tmp_path)], free_port(), {})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for r in ranks:  # two CPU processes, the policies DDP-wrapped, no autocast (the ddp file's bf16 is overridden)
        assert (r["world"], r["ddp"], r["distributed_type"], r["mixed_precision"], r["rows"]) == (
            2, [True, True], "DistributedType.MULTI_CPU", "no", half)

    state = {k: v.clone() for k, v in policy.state_dict().items()}
    move_parameters(policy)
    moved = {k: v.clone() for k, v in policy.state_dict().items()}
    policy.load_state_dict(state)
    for name, case in cases.items():
        got, other = ranks[0]["cases"][name], ranks[1]["cases"][name]
        assert got["old_head"], name  # z_old frozen in `prepare`
        assert (got["global_tokens"], got["global_seqs"]) == (float(batch.response_len.sum()), float(batch.size)), name
        # Both replicas hold the one all-reduced gradient and report the one all-reduced loss: bit-equal
        # (an all-reduce hands every rank the same sum; anything else would make the replicas drift apart).
        assert got["loss"] == other["loss"], name
        assert all(torch.equal(g, other["grads"][n]) for n, g in got["grads"].items()), name
        if "authors" in case:
            want = authors_reference(setup, state, moved, **case["authors"])
        else:
            want = reference(setup, state, moved, **case["ref"])
        if name.endswith("float32"):
            # float32 models (as trained) against the float64 reference: the policy, φ_DPO and φ_ref logits
            # carry float32 rounding (~1e-7 relative), and a loss of ~1e-2 is a sum of O(1) log-probability
            # differences, so its relative error is ~100x that. Measured: ≤ 5.7e-6 on the loss (KLD), ≤ 1.3e-6
            # on a gradient tensor; 1e-4 keeps ~20x headroom and still catches a wrong factor or statistic.
            assert_same((got["loss"], got["grads"]), want, name, rtol=1e-4, grad_rtol=1e-4)
        else:
            # float64: the single-process tolerances (RTOL, GRAD_RTOL, above) hold, as the only
            # differences are Qwen2's internal float32 RMSNorm/softmax on different padding (each process's half is
            # padded to its own longest row), the float64 order of the DDP all-reduce (2 summands) and the loop
            # reporting the all-reduced loss as a float32 tensor (6e-8 relative). Measured: ≤ 1.1e-7 on the loss,
            # ≤ 6e-8 on a gradient tensor. A missing or doubled world factor, a per-process token count or a
            # per-process advantage statistic is off by 1e-3 or more (per-process `batch` reward statistics: 1e-1).
            assert_same((got["loss"], got["grads"]), want, name)


# --------------------------------------------------------------------------- the authors' support by hand


def test_standardise_on_support_by_hand():
    got = standardise_on_support(torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]))
    # row 1: mean 2, unbiased std 1; row 2: constant, 0/0 -> 0 as their nan_to_num(0.0)
    assert torch.equal(got, torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))


def test_authors_mse_and_lch_fit_the_support_only_by_hand():
    z_old = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)   # support (k = 2): tokens 0, 1
    ids = z_old.topk(2, dim=-1).indices
    adv_k = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    z = torch.tensor([[3.0, 0.0, 5.0, 5.0]], dtype=torch.float64)          # far off z_old outside: ignored
    # β = 2: z*_S = (2 + 1/2, 1 − 1/2) = (2.5, 0.5); z_S − z*_S = (0.5, −0.5)
    loss, grad = authors_loss_and_grad("mse", z, z_old, ids, adv_k, 2.0)
    assert float(loss) == pytest.approx(0.5, abs=1e-15)                     # 0.25 + 0.25, summed over S
    assert grad.tolist() == [[1.0, -1.0, 0.0, 0.0]]                          # 2(z − z*) on S, 0 elsewhere
    loss, grad = authors_loss_and_grad("lch", z, z_old, ids, adv_k, 2.0)
    assert float(loss) == pytest.approx(2 * math.log(math.cosh(0.5)), abs=1e-15)
    assert grad[0].tolist() == pytest.approx([math.tanh(0.5), -math.tanh(0.5), 0.0, 0.0], abs=1e-15)


def test_authors_kld_puts_no_mass_off_the_support_by_hand():
    z_old = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    ids = z_old.topk(2, dim=-1).indices
    adv_k = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    z = torch.zeros(1, 4, dtype=torch.float64)                               # π_θ uniform
    loss, grad = authors_loss_and_grad("kld", z, z_old, ids, adv_k, 1.0)
    # β = 1: π* ∝ (e^{2+1}, e^{1−1}) on S and e^{−200}-small elsewhere
    p = [math.exp(3) / (math.exp(3) + 1), 1 / (math.exp(3) + 1)]
    want = sum(pi * (math.log(pi) - math.log(0.25)) for pi in p)
    assert float(loss) == pytest.approx(want, abs=1e-12)
    assert grad[0].tolist() == pytest.approx([0.25 - p[0], 0.25 - p[1], 0.25, 0.25], abs=1e-12)  # π_θ − π*


# --------------------------------------------------------------------------- through the CLI


def test_lco_defaults_take_several_steps_per_batch_and_log_the_descent(runner, run_dir):
    """Null train keys = LCO's own defaults (1 epoch x 4 minibatches): 4 optimizer steps per rollout
    batch, loss_first/loss_last logged; `authors` support trains through the CLI."""
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl",
                 "train.eval_every=0", "train.steps=1", "train.advantage_support=authors", "train.advantage_topk=5")
    assert res.exit_code == 0, res.output
    (row,) = read_jsonl(run_dir / "train/metrics.jsonl")
    assert {"loss_first", "loss_last", "grad_norm_first", "grad_norm_last"} <= set(row)
    assert math.isfinite(row["loss_last"]) and row["grad_norm_first"] > 0


def test_topk_needs_a_named_support(runner, run_dir):
    res = invoke(runner, "validate", "fast.yaml", "train.advantage_topk=5")
    assert res.exit_code == 2 and "train.advantage_support" in res.output
    res = invoke(runner, "validate", "fast.yaml", "train.advantage_support=authors", "train.advantage=sparse",
                 "train.advantage_topk=5")
    assert res.exit_code == 2 and "dense advantages" in res.output


def test_null_train_keys_resolve_to_each_algorithms_defaults():
    """One place (`Update.resolve`): paper §5 samples per prompt, TRL's PPO epochs, the authors' LCO minibatches;
    explicit values win; the bundled `tiny` pins the values its documented numbers were measured with."""
    import dataclasses

    from lco_cli.config.loader import load
    from lco_cli.rl.registry import get_algo

    train = load("tiny")[1].train
    assert (train.samples_per_prompt, train.update_epochs, train.minibatches) == (4, 1, 1)
    null = dataclasses.replace(train, samples_per_prompt=None, update_epochs=None, minibatches=None)
    want = {"lco": (1, 1, 4), "ppo": (1, 4, 1), "grpo": (4, 1, 1), "dapo": (4, 1, 1), "gspo": (4, 1, 1),
            "reinforce": (1, 1, 1), "gkd": (1, 1, 1), "minillm": (1, 1, 1)}
    for algo, expected in want.items():
        got = get_algo(algo).resolve(dataclasses.replace(null, algo=algo))
        assert (got.samples_per_prompt, got.update_epochs, got.minibatches) == expected, algo
    assert get_algo("grpo").resolve(dataclasses.replace(null, algo="grpo", samples_per_prompt=8)).samples_per_prompt == 8
