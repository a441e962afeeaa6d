"""The loss `lco train` runs (`LCOUpdate.prepare` + `micro_loss`, i.e. `losses.lco_chunked.lco_chunked_loss`)
equals the reference `losses.lco.lco_loss` on materialised logits, on a real rollout batch of the tiny
SFT policy scored by the tiny DPO RM, in float64: loss and parameter gradient summed over micro-batches,
with z_old frozen while the parameters move (several epochs), β_neg, clipping, both top-k supports.

Plus the authors' support (`train.advantage_support: authors`) by hand-derived numbers and against a
literal port of homzer/llama-rlhf's `src/ppo/trainer_lco.py` / `src/utils.create_lco_log_target`.
"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import invoke, read_jsonl

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
    from lco_cli.config.loader import load
    from lco_cli.engines.generation import make_engine
    from lco_cli.rl.advantage_sources import DPOReward
    from lco_cli.rl.registry import get_algo
    from lco_cli.rl.sampling import Sampler
    from lco_cli.rl.update import HiddenStatesLM
    from lco_cli.runtime import models
    from lco_cli.runtime.optim import make_accelerator
    from lco_cli.tasks import get_task

    _, p = load(str(prepared / "fast.yaml"), ["train.reward=rm", "train.samples_per_prompt=3"])
    cfg = get_algo("lco").resolve(p.train)
    sft, rm = str(prepared / "run/sft/final"), str(prepared / "run/rm/final")
    tok = models.load_tokenizer(sft, p.model)
    acc = make_accelerator("no", 0)
    reward = DPOReward(rm, p.model)
    reward.rm.double(), reward.ref.double()
    policy = HiddenStatesLM(models.load_model(sft, p.model, trainable=True)).double()
    reference = HiddenStatesLM(models.load_model(sft, p.model, trainable=False)).double()
    task = get_task(p.task, p.seed)
    torch.manual_seed(0)
    sampler = Sampler(cfg, make_engine("hf", policy.lm, tok, 16), policy, tok, task, reward, acc, p.seed)
    batch = sampler.sample(task.train[:4], cfg.samples_per_prompt)
    assert batch.rewards.unique().numel() > 1  # real, varied RM rewards (both advantage signs)
    return {"preset": p, "policy": policy, "reference": reference, "reward": reward, "acc": acc, "batch": batch}


def training_path(s, **train):
    """Loss and parameter gradient of the training path after the parameters moved (z_old frozen)."""
    import dataclasses

    from lco_cli.rl.lco import LCOUpdate
    from lco_cli.rl.update import MicroBatch, Normaliser, TrainEnv, row_chunks

    cfg = dataclasses.replace(s["preset"].train, **train, update_epochs=3, minibatches=1, micro_batch_size=3,
                              samples_per_prompt=3)
    policy, batch = s["policy"], s["batch"]
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    env = TrainEnv(cfg, policy, s["reference"], s["reward"], s["acc"], chunk_size=5)
    update = LCOUpdate(cfg, env)
    prep, _ = update.prepare(batch)
    with torch.no_grad():  # "later epochs": the parameters moved since prepare; z_old must not
        g = torch.Generator().manual_seed(1)
        for q in policy.parameters():
            q.add_(0.02 * torch.randn(q.shape, generator=g, dtype=q.dtype))
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


def reference(s, state, moved, kind, advantage, beta=1.0, beta_neg=None, clip=None, topk=None, center=True):
    """lco_loss on materialised float64 logits: z_old from the pre-update parameters, z_θ from the moved ones."""
    policy, batch = s["policy"], s["batch"]
    policy.load_state_dict(state)
    with torch.no_grad():
        z_old = logits_of(policy.lm, batch)
    policy.load_state_dict(moved)
    z = logits_of(policy.lm, batch)
    sampled = batch.sampled_ids
    if advantage == "sparse":
        seq = group_normalised(batch.rewards, batch.group)[batch.token_seq]
        adv = dense_advantage(sparse_advantage(sampled, seq, z.shape[-1]), center=center, clip=clip)
    else:
        adv = dense_advantage(raw_dense_advantage(s, advantage), center=center, clip=clip, topk=topk, old_logits=z_old)
    b = select_beta(beta, beta_neg, adv.gather(-1, sampled[:, None]).squeeze(-1)) if beta_neg else beta
    loss = lco_loss(z, z_old, adv, b, kind)
    policy.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: q.grad.clone() for n, q in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    policy.load_state_dict(state)
    return float(loss.detach()), grads


def assert_same(got, want):
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert loss == pytest.approx(ref_loss, rel=RTOL)
    assert any(float(g.abs().max()) > 1e-6 for g in ref_grads.values())  # a gradient that can be wrong
    for n, g in ref_grads.items():
        err = float((grads[n] - g).norm() / g.norm().clamp_min(1e-300))
        assert err < GRAD_RTOL, f"{n}: relative gradient error {err:.2e}"


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
    policy.load_state_dict(state)
    with torch.no_grad():
        old_logits = logits_of(policy.lm, batch)
    policy.load_state_dict(moved)
    logits = logits_of(policy.lm, batch)
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
    policy.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: q.grad.clone() for n, q in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    policy.load_state_dict(state)
    return float(loss.detach()), grads


@pytest.mark.parametrize("kind", ["kld", "mse", "lch"])
@pytest.mark.parametrize("advantage", ["dpo", "logprob"])
def test_training_path_with_the_authors_support_equals_their_code(setup, kind, advantage):
    train = {"objective": kind, "advantage": advantage, "advantage_support": "authors", "advantage_topk": 5, "beta": 2.0}
    loss, grads, state, moved, _ = training_path(setup, **train)
    # Their KLD does not centre A; ours does (normalisers cancel): the two π* differ only in the mass off
    # the support, ≤ V·e^-100 relative, far below float64 resolution — so the same tolerance holds.
    assert_same((loss, grads), authors_reference(setup, state, moved, kind, advantage, k=5, beta=2.0))


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
