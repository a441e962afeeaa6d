"""What tests/test_stability.py and its multi-process worker (tests/gap_worker.py) share: a train env around
a policy, a synthetic rollout batch with verdicts, and one measured update (probe, a plain SGD step, probe)."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch


def make_env(policy, acc, micro_batch_size: int = 3, chunk_size: int = 5, vocab: int | None = None):
    from lco_cli.rl.update import TrainEnv

    cfg = SimpleNamespace(micro_batch_size=micro_batch_size)
    return TrainEnv(cfg, policy, None, None, acc, chunk_size, vocab=vocab)


def synthetic_batch(vocab: int, n_prompts: int = 4, per_prompt: int = 3, seed: int = 0):
    """Random prompts and responses of varied lengths, `per_prompt` samples per prompt, both verdicts present."""
    from lco_cli.engines.generation import Rollouts
    from lco_cli.rl.rollout import from_rollouts

    g = torch.Generator().manual_seed(seed)
    rnd = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    prompts, responses, groups = [], [], []
    for q in range(n_prompts):
        prompt = torch.randint(1, vocab, (rnd(2, 5),), generator=g).tolist()
        for _ in range(per_prompt):
            prompts.append(prompt)
            responses.append(torch.randint(1, vocab, (rnd(1, 6),), generator=g).tolist())
            groups.append(q)
    correct = [bool(rnd(0, 2)) for _ in responses]
    correct[0], correct[1] = True, False
    roll = Rollouts(prompts, responses, [""] * len(responses), [False] * len(responses), groups)
    return from_rollouts(roll, 0, correct)


def global_mean_logprob_loss(env, batch, n_global: int) -> None:
    """Backward of −(1/n_global) Σ_i log π(o_i|q_i) (world-scaled: DDP/FSDP average over processes)."""
    from lco_cli.engines.chunked import chunked_selective_logprobs
    from lco_cli.rl.update import policy_head

    rows = list(range(batch.size))
    for i in range(0, batch.size, env.cfg.micro_batch_size):
        part = rows[i : i + env.cfg.micro_batch_size]
        last = i + env.cfg.micro_batch_size >= batch.size
        with contextlib.nullcontext() if last or env.world == 1 else env.accelerator.no_sync(env.policy):
            mb = batch.subset(part)
            lp = chunked_selective_logprobs(policy_head(env, mb), mb.sampled_ids, env.chunk_size)
            env.accelerator.backward(-lp.sum() * env.world / n_global)


def measured_update(env, batch, n_global: int, lr: float = 0.5, steps: int = 2, sharded: bool = False) -> dict:
    """Probe before, `steps` SGD steps on the mean sequence log-prob (an update of several optimizer steps), probe after."""
    from lco_cli.rl.stability import GradientGapProbe

    params = [p for p in env.policy.parameters() if p.requires_grad]
    probe = GradientGapProbe(env, params, has_verifier=True, sharded=sharded)
    probe.before_update(batch)
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        global_mean_logprob_loss(env, batch, n_global)
        opt.step()
    opt.zero_grad(set_to_none=True)
    return probe.after_update()
