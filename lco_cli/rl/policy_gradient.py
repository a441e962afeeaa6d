"""The policy-gradient baselines as `train.algo`s: same rollouts, reward and telemetry as LCO.

Each class is an `Update`: `prepare` (no grad, once per rollout batch) freezes the behaviour and
reference log-probs and the advantages; `micro_loss` evaluates the pure loss class of
`lco_cli.losses.policy_gradient` on the micro-batch's `[b, T]` tensors and scales its mean to the
micro-batch's share of the batch objective (the sum over micro-batches and processes is that loss).

| algo | sequence signal | loss | loop hooks |
|---|---|---|---|
| `reinforce` | `train.reward`, batch-mean or leave-one-out baseline | `Reinforce` | — |
| `grpo` | group-normalised `train.reward` | `GRPO` (clip, k3 KL) | — |
| `dapo` | group-normalised reward + overlong shaping | `DAPO` | dynamic-sampling refill (`collect`) |
| `gspo` | group-normalised `train.reward` | `GSPO` (sequence ratio) | — |

Knobs are `train.algo_args`, validated against the loss class's `Config`; `group_size` follows
`train.samples_per_prompt` and DAPO's `max_response_length` follows `train.rollout.max_new_tokens`
(an explicit, different value is an error). The loop's `update_epochs` / `minibatches` give
several epochs over minibatches with frozen old log-probs (their defaults, 1 and 1, make every ratio
exactly 1).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from lco_cli.engines.chunked import chunked_selective_logprobs
from lco_cli.losses.estimators import dynamic_sampling_keep
from lco_cli.losses.policy_gradient import DAPO, GRPO, GSPO, Reinforce
from lco_cli.rl.sampling import Scored
from lco_cli.rl.specs import DAPOSpec, GRPOSpec, GSPOSpec, ReinforceSpec
from lco_cli.rl.update import MicroBatch, Normaliser, Prepared, Update, global_mean, global_sum, part_mask, policy_head


def response_mask(lens: torch.Tensor) -> torch.Tensor:
    """[b, T] bool, left-aligned response tokens of rows with lengths `lens`."""
    width = int(lens.max()) if lens.numel() else 0
    return torch.arange(width, device=lens.device)[None, :] < lens[:, None]


def padded(values: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Flat row-major response-token values [N] -> [b, T] (`fill` at padding); keeps autograd."""
    out = torch.full(mask.shape, fill, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask.to(values.device), values)


def old_logprobs(prep: Prepared, logprobs: torch.Tensor) -> torch.Tensor:
    """log π_old(a_t): the behaviour pass's, or — one optimizer step per batch, no behaviour pass — the
    training forward's own, detached: the ratio π_θ/π_old is 1 in value and keeps its gradient (TRL 1.16)."""
    return prep.old_logprobs if prep.old_logprobs is not None else logprobs.detach()


def by_group(fn, values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Apply a loss class's grouped function (it expects each prompt's G samples adjacent) to a
    batch whose rows may be in any order (the loop shuffles rows for minibatches)."""
    order = torch.sort(group.to(values.device), stable=True).indices
    out = torch.empty_like(values)
    out[order] = fn(values[order])
    return out


class PolicyGradientUpdate(Update):
    """Shared machinery: advantages in `prepare`, log π(a_t) with grad from the chunked engine in
    `micro_loss`, the pure loss class on `[b, T]` tensors, rescaled to the batch objective.

    Split telemetry (`part` pos/neg) zeroes the other part's advantages (and KL terms) without
    changing any normaliser, so the two parts' gradients sum to the full one; diagnostics are then
    computed once on the whole micro-batch.
    """

    #: how the loss class normalises: "token" (mean over tokens) or "seq" (mean over sequences)
    aggregation = "token"
    keeps_old_head = False
    #: the `Prepared` subclass `prepare` fills (subclasses with more frozen inputs extend it)
    prepared_cls: ClassVar[type[Prepared]] = Prepared
    diagnostic_prefixes = Update.diagnostic_prefixes + ("adv", "pg_", "logprob_mean", "single_step", "distill")
    #: loss-class diagnostics renamed so they don't overwrite the loop's common metrics
    renames: ClassVar[dict[str, str]] = {"kl_ref": "kl_term"}
    dropped = ("loss", "explained_variance", "response_len_mean")

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.algo = self.loss_cls(self.loss_config(cfg))

    # ---- prepare

    def sequence_advantages(self, batch, stats: dict) -> torch.Tensor:
        raise NotImplementedError

    def token_advantages(self, batch, common: Prepared, stats: dict) -> tuple[torch.Tensor, dict]:
        """Per-token advantages [N] and any further frozen inputs of `prepared_cls`."""
        seq = self.sequence_advantages(batch, stats)
        return seq[batch.token_seq.to(seq.device)], {}

    @torch.no_grad()
    def prepare(self, batch):
        common, _, stats = self.behaviour(batch)
        adv, extra = self.token_advantages(batch, common, stats)
        adv = adv.float()
        stats["advantage_mean"] = global_mean(self.env, adv)
        stats["advantage_abs_mean"] = global_mean(self.env, adv.abs())
        stats["advantage_pos_frac"] = global_mean(self.env, (adv >= 0).float())
        prep = self.prepared_cls(old_logprobs=common.old_logprobs, ref_logprobs=common.ref_logprobs, entropy=common.entropy,
                                 adv_sampled=adv, forward=common.forward, **extra)
        return prep, stats

    # ---- loss

    def loss_inputs(self, mb, prep: Prepared, logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat [n] inputs of the loss class besides logprobs/advantages (PPO adds its values)."""
        inputs = {"old_logprobs": old_logprobs(prep, logprobs)}
        if prep.ref_logprobs is not None:  # None: no reference loaded (no KL term, train.telemetry.kl_ref off)
            inputs["ref_logprobs"] = prep.ref_logprobs
        return inputs

    def mask_part(self, inputs: dict, keep: torch.Tensor, logprobs: torch.Tensor, part: str) -> dict:
        """Inputs for one split-telemetry part: no value, no gradient from the other part's tokens."""
        out = dict(inputs)
        out["advantages"] = inputs["advantages"] * keep
        if "ref_logprobs" in out:  # k3/k1 KL terms vanish (value and gradient) where ref = logπ
            out["ref_logprobs"] = torch.where(keep, inputs["ref_logprobs"], logprobs.detach())
        return out

    def micro_loss(self, batch, view: MicroBatch, prep: Prepared, norm: Normaliser, part: str = "all", stats: bool = False):
        mb = batch.subset(view.rows)
        head = policy_head(self.env, mb)
        logprobs = chunked_selective_logprobs(head, mb.sampled_ids, self.env.chunk_size, tokens=prep.forward)
        mask = response_mask(batch.response_len[view.rows].to(logprobs.device))
        inputs = self.loss_inputs(mb, prep, logprobs)
        inputs["advantages"] = prep.adv_sampled
        keep = part_mask(inputs["advantages"], part)
        used = inputs if part == "all" else self.mask_part(inputs, keep, logprobs, part)
        loss, diag = self.algo.loss(logprobs=padded(logprobs, mask), mask=mask, **{k: padded(v, mask) for k, v in used.items()})
        if part != "all":  # diagnostics of the whole micro-batch, not of the masked part
            with torch.no_grad():
                _, diag = self.algo.loss(logprobs=padded(logprobs.detach(), mask), mask=mask,
                                         **{k: padded(v.detach(), mask) for k, v in inputs.items()})
        return loss * norm.share(batch, view.rows, self.aggregation), self.rename(diag)

    def rename(self, diag: dict) -> dict:
        return {self.renames.get(k, k): v for k, v in diag.items() if k not in self.dropped}


class ReinforceUpdate(ReinforceSpec, PolicyGradientUpdate):
    """REINFORCE: −(1/B) Σ_i A_i Σ_t log π(a_t), A = r − batch mean (1 sample per prompt) or the
    leave-one-out baseline (RLOO, >1 samples per prompt)."""

    loss_cls = Reinforce
    aggregation = "seq"

    def sequence_advantages(self, batch, stats):
        r = batch.rewards.float()
        c = self.algo.config
        if c.use_baseline and c.group_size == 1 and self.env.world > 1:  # the batch mean over every process
            return r - float(global_sum(self.env, r.sum()) / global_sum(self.env, torch.tensor(float(r.numel()), device=r.device)))
        return by_group(self.algo.advantages, r, batch.group)


class GroupUpdate(PolicyGradientUpdate):
    """GRPO / GSPO: group-normalised sequence rewards (r − mean_g) / (std_g + ε)."""

    def sequence_advantages(self, batch, stats):
        return by_group(self.algo.advantages, batch.rewards.float(), batch.group)


class GRPOUpdate(GRPOSpec, GroupUpdate):
    """GRPO: clipped token ratio (ε = 0.2), k3 KL to the reference in the loss (β_KL = 0.04)."""

    loss_cls = GRPO

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.aggregation = "seq" if self.algo.config.loss_type in ("grpo", "dr_grpo") else "token"


class GSPOUpdate(GSPOSpec, GroupUpdate):
    """GSPO: sequence-level length-normalised ratio, clipped to [1 − 3e-4, 1 + 4e-4]."""

    loss_cls = GSPO
    aggregation = "seq"


class DAPOUpdate(DAPOSpec, PolicyGradientUpdate):
    """DAPO: clip-higher (0.2 / 0.28), token-level aggregation, no KL, soft overlong punishment
    (L_max = `train.rollout.max_new_tokens`), and dynamic sampling.

    Dynamic sampling (`collect`): groups whose `train.reward` values are all equal (before overlong
    shaping, as verl filters on the task score) are dropped and the batch is refilled with
    responses to freshly drawn prompts, for at most `max_gen_batches` rollout rounds per step
    (the first included); the kept groups are cut to the step's batch size. When fewer groups
    survive the batch is smaller; when none survive (on any process) the step makes no update —
    the row logs `update_skipped: 1`, `dropped_groups` and the rollout stats, and training goes on.
    """

    loss_cls = DAPO
    aggregation = "token"
    def collect(self, sampler, step, examples):
        c, G = self.algo.config, self.cfg.samples_per_prompt
        first = sampler.generate(examples, G)
        if not c.dynamic_sampling:
            return sampler.pack(first), {}
        target, kept, n_kept, dropped, rounds, current = len(examples), [], 0, 0, 0, first
        while True:
            rounds += 1
            keep = dynamic_sampling_keep(current.rewards, G).tolist()
            groups = [g for g, k in enumerate(keep) if k]
            dropped += len(keep) - len(groups)
            kept.append(current.select_groups(groups))
            n_kept += len(groups)
            short = self._global_max(target - n_kept)
            if short <= 0 or rounds >= c.max_gen_batches:
                break
            current = sampler.generate(sampler.extra_examples(step, rounds, target), G)
        acc = self.env.accelerator
        stats = {"dropped_groups": float(acc.reduce(torch.tensor(float(dropped), device=acc.device), "sum")),
                 "kept_groups": float(acc.reduce(torch.tensor(float(min(n_kept, target)), device=acc.device), "sum")),
                 "gen_batches": float(rounds)}
        if -self._global_max(-n_kept) == 0:  # some process has nothing to train on: skip the update everywhere
            return None, {**stats, "log_batch": sampler.pack(first)}
        return sampler.pack(Scored.concat(kept).select_groups(list(range(min(n_kept, target))))), stats

    def _global_max(self, value: int) -> int:
        acc = self.env.accelerator
        if acc.num_processes == 1:
            return value
        return int(acc.gather(torch.tensor([float(value)], device=acc.device)).max())

    def sequence_advantages(self, batch, stats):
        shaped = self.algo.shape_rewards(batch.rewards.float(), batch.response_len.float())
        stats["overlong_penalty_mean"] = global_mean(self.env, shaped - batch.rewards.float())
        return by_group(self.algo.advantages, shaped, batch.group)
