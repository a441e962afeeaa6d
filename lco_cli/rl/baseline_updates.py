"""The baselines as `train.algo`s of the `lco train` loop: same rollouts, same reward, same
telemetry as LCO — only the objective differs.

Each class is an `algorithms.Update`: `prepare(batch)` (no grad, once per rollout batch) freezes
the behaviour log-probs, reference log-probs, the advantages and whatever else the algorithm
needs; `micro_loss(batch, rows, part)` returns the micro-batch's share of the batch objective (the
sum over micro-batches and processes is the loss of the pure loss classes in `lco_cli.losses.baselines`,
whose maths they reuse unchanged).

| algo | sequence / token signal | objective (from `baselines`) | loop hooks |
|---|---|---|---|
| `reinforce` | `train.reward`, batch-mean or leave-one-out baseline | `Reinforce` | — |
| `ppo` | φ_DPO token log-ratios − KL(π_old‖π_ref) penalty (+ verifier at the end), GAE | `PPO` | value model + own optimizer (`aux_step`) |
| `grpo` | group-normalised `train.reward` | `GRPO` (clip, k3 KL) | — |
| `dapo` | group-normalised reward + overlong shaping | `DAPO` | dynamic-sampling refill (`collect`) |
| `gspo` | group-normalised `train.reward` | `GSPO` (sequence ratio) | — |
| `gkd` | φ_DPO as teacher, generalised JSD over the full vocabulary | `GKD.token_loss` in `chunked_token_loss` | λ-mixture with dataset answers (`collect`) |
| `minillm` | φ_DPO as teacher: single-step reverse KL + long-term PG | `MiniLLM` | teacher-mixed sampling (`collect`) |

Log-probabilities with gradient come from `chunked_selective_logprobs` and full-vocabulary terms
from `chunked_token_loss`: no `[tokens × V]` tensor is built for a micro-batch.

Knobs are `train.algo_args`, validated against the loss class's `Config`; `group_size` follows
`train.samples_per_prompt` and DAPO's `max_response_length` follows `train.rollout.max_new_tokens`
(an explicit, different value is an error). The loop's `update_epochs` / `minibatches` give PPO's
epochs over minibatches with frozen old log-probs (TRL's PPO uses 4 epochs; set them yourself —
the loop's defaults, 1 and 1, make every ratio exactly 1).
"""
from __future__ import annotations

import dataclasses
import math
import random
from typing import ClassVar

import torch

from lco_cli.rl.update import TrainEnv, Update, _rows, flat, global_sum, policy_head, token_slice
from lco_cli.losses.baselines import DAPO, GKD, GRPO, GSPO, PPO, BaselineLoss, MiniLLM, Reinforce, _explained_variance, dynamic_sampling_keep
from lco_cli.engines.chunked import VocabHead, chunked_entropy_and_logprobs, chunked_selective_logprobs, chunked_token_loss
from lco_cli.errors import ConfigError

#: DAPO's overlong cache is 4096 of 20480 tokens (§4.1); the same fraction of our max length.
OVERLONG_CACHE_FRACTION = 0.2


# --------------------------------------------------------------------------- configuration


def algo_config(cfg, loss_cls: type[BaselineLoss]):
    """`loss_cls.Config` from `train.algo_args`, with the keys the loop owns filled in.

    `group_size` ← `train.samples_per_prompt`; DAPO `max_response_length` ←
    `train.rollout.max_new_tokens` (its `overlong_cache` defaults to 20% of it); GRPO's dr_grpo
    normaliser `max_completion_length` defaults to `train.rollout.max_new_tokens`. An explicit
    `algo_args` value that contradicts a loop-owned key is a ConfigError (exit 2).
    """
    from lco_cli.config import build

    args = dict(cfg.algo_args or {})
    errors: list[str] = []
    base = build(loss_cls.Config, args, "train.algo_args", errors)
    if errors:
        raise ConfigError("invalid train.algo_args", errors)
    names = {f.name for f in dataclasses.fields(loss_cls.Config)}
    owned: dict[str, tuple[object, str]] = {}
    if "group_size" in names:
        owned["group_size"] = (cfg.samples_per_prompt, "train.samples_per_prompt")
    if loss_cls is DAPO:
        owned["max_response_length"] = (cfg.rollout.max_new_tokens, "train.rollout.max_new_tokens")
    conflicts = [f"train.algo_args.{k}: {args[k]!r} conflicts with {src}={v} (leave it out: it follows {src})"
                 for k, (v, src) in owned.items() if k in args and args[k] != v]
    if conflicts:
        raise ConfigError("train.algo_args contradicts the train config", conflicts)
    values = {k: v for k, (v, _) in owned.items()}
    if loss_cls is DAPO and "overlong_cache" not in args:
        values["overlong_cache"] = max(1, round(OVERLONG_CACHE_FRACTION * cfg.rollout.max_new_tokens))
    if loss_cls is GRPO and args.get("max_completion_length") is None:
        values["max_completion_length"] = cfg.rollout.max_new_tokens
    return dataclasses.replace(base, **values)


# --------------------------------------------------------------------------- helpers


def response_mask(lens: torch.Tensor) -> torch.Tensor:
    """[b, T] bool, left-aligned response tokens of rows with lengths `lens`."""
    width = int(lens.max()) if lens.numel() else 0
    return torch.arange(width, device=lens.device)[None, :] < lens[:, None]


def padded(values: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Flat row-major response-token values [N] -> [b, T] (`fill` at padding); keeps autograd."""
    out = torch.full(mask.shape, fill, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask.to(values.device), values)


def by_group(fn, values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Apply a loss class's grouped function (it expects each prompt's G samples adjacent) to a
    batch whose rows may be in any order (the loop shuffles rows for minibatches)."""
    order = torch.sort(group.to(values.device), stable=True).indices
    out = torch.empty_like(values)
    out[order] = fn(values[order])
    return out


def part_mask(adv: torch.Tensor, part: str) -> torch.Tensor:
    """Tokens of the split-telemetry part: all, advantage ≥ 0 (pos) or < 0 (neg)."""
    if part == "pos":
        return adv >= 0
    if part == "neg":
        return adv < 0
    return torch.ones_like(adv, dtype=torch.bool)


@torch.no_grad()
def teacher_pass(env: TrainEnv, batch, micro: int, keep_head: bool = False) -> dict[str, torch.Tensor]:
    """φ_DPO and φ_ref log-probs of the sampled tokens ([N] each), chunked over the vocabulary;
    with `keep_head`, also φ_DPO's final hidden states and head (a `VocabHead` tuple) for
    full-vocabulary teacher terms."""
    if env.reward is None:
        raise ConfigError(f"train.algo={env.cfg.algo} needs the DPO reward model (rm stage)")
    rm_lp, ref_lp, rm_h = [], [], []
    for rows in _rows(batch.size, micro):
        mb = batch.subset(rows)
        (h_rm, w_rm, b_rm), (h_ref, w_ref, b_ref) = env.reward.hidden_states(mb.input_ids, mb.attention_mask)
        h_rm, h_ref = flat(h_rm, mb.targets), flat(h_ref, mb.targets)
        rm_lp.append(chunked_entropy_and_logprobs(VocabHead(h_rm, w_rm, b_rm), mb.sampled_ids, env.chunk_size)[1])
        ref_lp.append(chunked_entropy_and_logprobs(VocabHead(h_ref, w_ref, b_ref), mb.sampled_ids, env.chunk_size)[1])
        if keep_head:
            rm_h.append(h_rm)
    out = {"rm_logprobs": torch.cat(rm_lp), "rm_ref_logprobs": torch.cat(ref_lp)}
    if keep_head:
        out["rm_head"] = (torch.cat(rm_h), w_rm, b_rm)
    return out


def share(batch, rows: list[int], aggregation: str, world: int) -> float:
    """Factor turning a loss class's micro-batch mean into its share of the batch objective: the
    micro-batch's fraction of the (global) tokens or sequences, times the world size (DDP averages)."""
    ex = batch.extras
    if aggregation == "seq":
        return len(rows) / ex["global_seqs"] * world
    return float(batch.response_len[rows].sum()) / ex["global_tokens"] * world


def _mean(env: TrainEnv, x: torch.Tensor) -> float:
    n = global_sum(env, torch.tensor(float(x.numel()), device=x.device)).clamp(min=1)
    return float(global_sum(env, x.float().sum()) / n)


# --------------------------------------------------------------------------- policy gradient


class PolicyGradientUpdate(Update):
    """Shared machinery: advantages in `prepare`, log π(a_t) with grad from the chunked engine in
    `micro_loss`, the pure loss class on `[b, T]` tensors, rescaled to the batch objective.

    Split telemetry (`part` pos/neg) zeroes the other part's advantages (and KL terms) without
    changing any normaliser, so the two parts' gradients sum to the full one; diagnostics are then
    computed once on the whole micro-batch.
    """

    loss_cls: type[BaselineLoss] = BaselineLoss
    #: how the loss class normalises: "token" (mean over tokens) or "seq" (mean over sequences)
    aggregation = "token"
    keeps_old_head = False
    diagnostic_prefixes = Update.diagnostic_prefixes + ("adv", "pg_", "logprob_mean", "single_step", "distill")
    #: loss-class diagnostics renamed so they don't overwrite the loop's common metrics
    renames: ClassVar[dict[str, str]] = {"kl_ref": "kl_term"}
    dropped = ("loss", "explained_variance", "response_len_mean")

    def __init__(self, cfg, env: TrainEnv):
        super().__init__(cfg, env)
        self.algo = self.loss_cls(algo_config(cfg, self.loss_cls))

    # ---- prepare

    def sequence_advantages(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def token_advantages(self, batch, stats: dict) -> torch.Tensor:
        seq = self.sequence_advantages(batch)
        batch.extras["seq_adv"] = seq
        return seq[batch.token_seq.to(seq.device)]

    @torch.no_grad()
    def prepare(self, batch) -> dict[str, float]:
        stats = super().prepare(batch)
        adv = self.token_advantages(batch, stats).float()
        batch.extras["adv_sampled"] = adv
        stats["advantage_mean"] = _mean(self.env, adv)
        stats["advantage_abs_mean"] = _mean(self.env, adv.abs())
        stats["advantage_pos_frac"] = _mean(self.env, (adv >= 0).float())
        return stats

    # ---- loss

    def scale(self, batch, rows: list[int]) -> float:
        return share(batch, rows, self.aggregation, self.env.world)

    def loss_inputs(self, batch, rows, tokens, mb, logprobs) -> dict[str, torch.Tensor]:
        """Flat [n] inputs of the loss class besides logprobs/advantages (overridden by PPO)."""
        ex = batch.extras
        return {"old_logprobs": ex["old_logprobs"][tokens], "ref_logprobs": ex["ref_logprobs"][tokens]}

    def mask_part(self, inputs: dict, keep: torch.Tensor, logprobs: torch.Tensor, part: str) -> dict:
        """Inputs for one split-telemetry part: no value, no gradient from the other part's tokens."""
        out = dict(inputs)
        out["advantages"] = inputs["advantages"] * keep
        if "ref_logprobs" in out:  # k3/k1 KL terms vanish (value and gradient) where ref = logπ
            out["ref_logprobs"] = torch.where(keep, inputs["ref_logprobs"], logprobs.detach())
        return out

    def micro_loss(self, batch, rows: list[int], part: str = "all", stats: bool = False):
        ex = batch.extras
        mb, tokens = batch.subset(rows), token_slice(batch, rows)
        head = policy_head(self.env, mb)
        logprobs = chunked_selective_logprobs(head, mb.sampled_ids, self.env.chunk_size)
        mask = response_mask(batch.response_len[rows].to(logprobs.device))
        inputs = self.loss_inputs(batch, rows, tokens, mb, logprobs)
        inputs["advantages"] = ex["adv_sampled"][tokens]
        keep = part_mask(inputs["advantages"], part)
        used = inputs if part == "all" else self.mask_part(inputs, keep, logprobs, part)
        loss, diag = self.algo.loss(logprobs=padded(logprobs, mask), mask=mask, **{k: padded(v, mask) for k, v in used.items()})
        if part != "all":  # diagnostics of the whole micro-batch, not of the masked part
            with torch.no_grad():
                _, diag = self.algo.loss(logprobs=padded(logprobs.detach(), mask), mask=mask,
                                         **{k: padded(v.detach(), mask) for k, v in inputs.items()})
        return loss * self.scale(batch, rows), self.rename(diag)

    def rename(self, diag: dict) -> dict:
        return {self.renames.get(k, k): v for k, v in diag.items() if k not in self.dropped}


class ReinforceUpdate(PolicyGradientUpdate):
    """REINFORCE: −(1/B) Σ_i A_i Σ_t log π(a_t), A = r − batch mean (1 sample per prompt) or the
    leave-one-out baseline (RLOO, >1 samples per prompt)."""

    loss_cls = Reinforce
    aggregation = "seq"

    def sequence_advantages(self, batch):
        r = batch.rewards.float()
        c = self.algo.config
        if c.use_baseline and c.group_size == 1 and self.env.world > 1:  # the batch mean over every process
            return r - float(global_sum(self.env, r.sum()) / global_sum(self.env, torch.tensor(float(r.numel()), device=r.device)))
        return by_group(self.algo.advantages, r, batch.group)


class GroupUpdate(PolicyGradientUpdate):
    """GRPO / GSPO: group-normalised sequence rewards (r − mean_g) / (std_g + ε)."""

    def sequence_advantages(self, batch):
        return by_group(self.algo.advantages, batch.rewards.float(), batch.group)


class GRPOUpdate(GroupUpdate):
    """GRPO: clipped token ratio (ε = 0.2), k3 KL to the reference in the loss (β_KL = 0.04)."""

    loss_cls = GRPO

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.aggregation = "seq" if self.algo.config.loss_type in ("grpo", "dr_grpo") else "token"


class GSPOUpdate(GroupUpdate):
    """GSPO: sequence-level length-normalised ratio, clipped to [1 − 3e-4, 1 + 4e-4]."""

    loss_cls = GSPO
    aggregation = "seq"


class DAPOUpdate(PolicyGradientUpdate):
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
        return sampler.pack(type(first).concat(kept).select_groups(list(range(min(n_kept, target))))), stats

    def _global_max(self, value: int) -> int:
        acc = self.env.accelerator
        if acc.num_processes == 1:
            return value
        return int(acc.gather(torch.tensor([float(value)], device=acc.device)).max())

    def sequence_advantages(self, batch):
        shaped = self.algo.shape_rewards(batch.rewards.float(), batch.response_len.float())
        batch.extras["overlong_penalty"] = shaped - batch.rewards.float()
        return by_group(self.algo.advantages, shaped, batch.group)

    @torch.no_grad()
    def prepare(self, batch):
        stats = super().prepare(batch)
        stats["overlong_penalty_mean"] = _mean(self.env, batch.extras["overlong_penalty"])
        return stats


# --------------------------------------------------------------------------- PPO


class ValueModel(torch.nn.Module):
    """A scalar value head on a copy of the initial policy's decoder: V(s_t) at every position."""

    def __init__(self, lm):
        super().__init__()
        from lco_cli.rl.update import HiddenStatesLM

        self.body = HiddenStatesLM(lm)
        base = self.body._base()
        out, inp = base.get_output_embeddings(), base.get_input_embeddings()
        if out is not None and out.weight is not inp.weight:  # the LM head is unused: keep DDP from waiting on it
            out.weight.requires_grad_(False)
        hidden = base.config.hidden_size
        weight = next(lm.parameters())
        self.v_head = torch.nn.Linear(hidden, 1, dtype=weight.dtype)
        torch.nn.init.normal_(self.v_head.weight, std=1.0 / math.sqrt(hidden + 1))
        torch.nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask):
        return self.v_head(self.body(input_ids, attention_mask)).squeeze(-1).float()  # [B, L]


class PPOUpdate(PolicyGradientUpdate):
    """PPO with a value model, GAE and dense token rewards (Zhong et al. 2024, "DPO meets PPO").

    Token reward r_t = log φ_DPO(a_t|s_t) − log φ_ref(a_t|s_t) (the DPO RM's per-token log-ratio,
    unscaled, so Σ_t r_t is the `rm` sequence reward) − kl_coef·(log π_old − log π_ref); with
    `train.reward: verifier` the ±1 verdict is added at the last token as well. GAE (γ = 1,
    λ = 0.95), whitened advantages, clipped ratio (ε = 0.2) and clipped value loss (TRL). The value
    model — a value head on a fresh copy of the initial policy — has its own AdamW (`value_lr`,
    default `train.lr`), stepped after every policy step, gradient-clipped at `train.max_grad_norm`,
    and saved in the stage's checkpoints (resumable).
    """

    loss_cls = PPO
    aggregation = "token"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        from lco_cli.runtime import models
        from lco_cli.runtime.training import make_optimizer

        if env.init_from is None:
            raise ConfigError("train.algo=ppo: the loop did not say where the initial policy is (TrainEnv.init_from)")
        lm = models.load_model(env.init_from, env.model_cfg, trainable=True)
        value = ValueModel(lm)
        value_opt = make_optimizer(value, self.algo.config.value_lr or cfg.lr, cfg.weight_decay)
        self.value, self.value_opt = env.accelerator.prepare(value, value_opt)
        self.value_params = [q for q in self.value.parameters() if q.requires_grad]

    def _values(self, mb) -> torch.Tensor:
        return flat(self.value(input_ids=mb.input_ids, attention_mask=mb.attention_mask), mb.targets)

    def token_advantages(self, batch, stats):
        ex, cfg = batch.extras, self.cfg
        t = teacher_pass(self.env, batch, cfg.micro_batch_size)
        old_values = torch.cat([self._values(batch.subset(rows)) for rows in _rows(batch.size, cfg.micro_batch_size)])
        dense = (t["rm_logprobs"] - t["rm_ref_logprobs"]).float()
        mask = response_mask(batch.response_len)
        rewards = padded(dense, mask)
        if cfg.reward == "verifier":  # the outcome reward at each response's last token
            last = (batch.response_len - 1).clamp(min=0)
            rewards[torch.arange(batch.size, device=rewards.device), last] += batch.rewards.float()
        old, ref = padded(ex["old_logprobs"].float(), mask), padded(ex["ref_logprobs"].float(), mask)
        shaped = self.algo.shaped_rewards(rewards, old, ref, mask)
        values = padded(old_values, mask)
        adv, returns = self.algo.advantages(shaped, values, mask)
        ex["old_values"], ex["returns"] = old_values, returns[mask]
        stats["dense_reward_mean"] = _mean(self.env, dense)
        stats["kl_penalty_mean"] = _mean(self.env, (shaped - rewards)[mask])
        stats["value_mean"] = _mean(self.env, old_values)
        stats["explained_variance"] = _explained_variance(values, returns, mask)
        return adv[mask]

    def loss_inputs(self, batch, rows, tokens, mb, logprobs):
        ex = batch.extras
        return {"old_logprobs": ex["old_logprobs"][tokens], "ref_logprobs": ex["ref_logprobs"][tokens],
                "values": self._values(mb), "old_values": ex["old_values"][tokens], "returns": ex["returns"][tokens]}

    def mask_part(self, inputs, keep, logprobs, part):
        out = super().mask_part(inputs, keep, logprobs, part)
        if part == "neg":
            # The value loss belongs to the "pos" pass only (its gradient must not count twice); in the
            # "neg" pass V = V_old = R gives it value 0 and no gradient.
            out["values"] = out["old_values"] = inputs["returns"]
        return out

    def aux_step(self) -> dict[str, float]:
        acc = self.env.accelerator
        if self.cfg.max_grad_norm > 0:
            norm = float(acc.clip_grad_norm_(self.value_params, self.cfg.max_grad_norm))
        else:
            from lco_cli.runtime.training import grad_norm_of

            norm = grad_norm_of(self.value_params)
        self.value_opt.step()
        self.value_opt.zero_grad(set_to_none=True)
        return {"value_grad_norm": norm}

    def aux_zero_grad(self) -> None:
        self.value_opt.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- distillation


class TeacherUpdate(Update):
    """φ_DPO as the teacher: its final hidden states are frozen in `prepare` and projected in token
    chunks next to the policy's inside `chunked_token_loss`."""

    keeps_old_head = False
    needs_rm = True
    diagnostic_prefixes = Update.diagnostic_prefixes + ("distill", "single_step", "pg_", "adv")

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.algo = self.loss_cls(algo_config(cfg, self.loss_cls))

    def teacher_loss(self, batch, rows, tokens, mb, head, keep, stats, token_loss):
        """Σ_t w_t ℓ_t over the micro-batch, w_t = world / global tokens (0 outside `keep`)."""
        ex = batch.extras
        rm = VocabHead(ex["rm_head"][0][tokens], *ex["rm_head"][1:])
        weights = torch.full((head.num_tokens,), self.env.world / ex["global_tokens"], device=head.hidden.device)
        weights = weights * keep.to(weights.device)
        sampled = mb.sampled_ids

        def targets(sl):
            return {"teacher": rm.logits(sl), "sampled_ids": sampled[sl]}

        def per_token(z, teacher, sampled_ids):
            return token_loss(z, teacher)

        loss, st = chunked_token_loss(head, per_token, weights, self.env.chunk_size, targets=targets, stats=stats)
        mean = float(loss.detach()) / float(weights.sum()) if float(weights.sum()) > 0 else 0.0
        return loss, st, mean


class GKDUpdate(TeacherUpdate):
    """GKD: generalised JSD (β = 0.5) between π_θ and φ_DPO over the full vocabulary, token mean.

    `collect`: with probability λ (`lmbda`, per step, seeded) the batch is on-policy samples, else
    the task's ground-truth answers for the same prompts (GKD Alg. 1 / TRL's per-batch coin)."""

    loss_cls = GKD

    def collect(self, sampler, step, examples):
        on_policy = random.Random(f"gkd-{sampler.seed}-{step}").random() < self.algo.config.lmbda
        batch = sampler.sample(examples, self.cfg.samples_per_prompt) if on_policy else sampler.pack(sampler.dataset(examples))
        return batch, {"gkd_on_policy": float(on_policy)}

    @torch.no_grad()
    def prepare(self, batch):
        stats = super().prepare(batch)
        batch.extras["rm_head"] = teacher_pass(self.env, batch, self.cfg.micro_batch_size, keep_head=True)["rm_head"]
        batch.extras["adv_sampled"] = torch.zeros_like(batch.extras["old_logprobs"])  # no advantages: all "pos"
        return stats

    def micro_loss(self, batch, rows, part="all", stats=False):
        mb, tokens = batch.subset(rows), token_slice(batch, rows)
        head = policy_head(self.env, mb)
        keep = part_mask(batch.extras["adv_sampled"][tokens], part)
        loss, st, mean = self.teacher_loss(batch, rows, tokens, mb, head, keep, stats, self.algo.token_loss)
        return loss, {**st, "distill_jsd": mean}


class MiniLLMUpdate(TeacherUpdate):
    """MiniLLM: reverse KL to φ_DPO by policy gradient (Gu et al. 2023 §2.2).

    * single-step term: exact per-token KL(π_θ‖φ_DPO) over the full vocabulary, chunked;
    * long-term term: clipped PG on R^Norm_{t+1}, the length-normalised reward-to-go of
      r_t = log φ_DPO(a_t) − log π_old(a_t), whitened;
    * teacher-mixed sampling: rollouts draw each token from α·φ_DPO + (1 − α)·π_θ (α = 0.2) at the
      loop's temperature / top-p, and the ratio carries w_t = π_old(a_t) / p̃(a_t) (evaluated at
      temperature 1, as every ratio of this loop).
    """

    loss_cls = MiniLLM

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        if cfg.rollout.engine != "hf":
            raise ConfigError("train.algo=minillm: teacher-mixed sampling needs train.rollout.engine=hf")
        # the single-step term runs through the chunked engine; the PG part uses the loss class
        self.pg = MiniLLM(dataclasses.replace(self.algo.config, single_step_reg=False))

    def collect(self, sampler, step, examples):
        alpha = self.algo.config.teacher_mix_alpha
        return sampler.sample(examples, self.cfg.samples_per_prompt, teacher=self.env.reward.rm, teacher_mix_alpha=alpha), {}

    @torch.no_grad()
    def prepare(self, batch):
        stats = super().prepare(batch)
        ex = batch.extras
        t = teacher_pass(self.env, batch, self.cfg.micro_batch_size, keep_head=self.algo.config.single_step_reg)
        if "rm_head" in t:
            ex["rm_head"] = t["rm_head"]
        mask = response_mask(batch.response_len)
        old, teacher = padded(ex["old_logprobs"].float(), mask), padded(t["rm_logprobs"].float(), mask)
        adv = self.algo.advantages(old, teacher, mask)[mask]
        ex["mix_weights"] = self.algo.mix_weights(ex["old_logprobs"].float(), t["rm_logprobs"].float())
        ex["adv_sampled"] = adv
        stats["advantage_mean"] = _mean(self.env, adv)
        stats["advantage_pos_frac"] = _mean(self.env, (adv >= 0).float())
        stats["teacher_logprob_mean"] = _mean(self.env, t["rm_logprobs"])
        stats["mix_weight_mean"] = _mean(self.env, ex["mix_weights"])
        return stats

    def micro_loss(self, batch, rows, part="all", stats=False):
        ex = batch.extras
        mb, tokens = batch.subset(rows), token_slice(batch, rows)
        head = policy_head(self.env, mb)
        logprobs = chunked_selective_logprobs(head, mb.sampled_ids, self.env.chunk_size)
        mask = response_mask(batch.response_len[rows].to(logprobs.device))
        adv = ex["adv_sampled"][tokens]
        keep = part_mask(adv, part)
        P = lambda x: padded(x, mask)
        # importance weights are 1 at padding (log w enters the ratio; 0 would give −inf there)
        inputs = {"old_logprobs": P(ex["old_logprobs"][tokens]), "mix_weights": padded(ex["mix_weights"][tokens], mask, 1.0)}
        pg, diag = self.pg.loss(logprobs=P(logprobs), advantages=P(adv * keep), mask=mask, **inputs)
        if part != "all":
            with torch.no_grad():
                _, diag = self.pg.loss(logprobs=P(logprobs.detach()), advantages=P(adv), mask=mask, **inputs)
        loss = pg * share(batch, rows, "token", self.env.world)
        out = {k: v for k, v in diag.items() if k != "loss"}
        if self.algo.config.single_step_reg:
            single, st, mean = self.teacher_loss(batch, rows, tokens, mb, head, keep, stats, self.algo.token_loss)
            loss = loss + single
            out.update(st)
            out["single_step_kl"] = mean
        return loss, out


# --------------------------------------------------------------------------- registry


BASELINE_UPDATES: dict[str, type[Update]] = {
    "reinforce": ReinforceUpdate,
    "ppo": PPOUpdate,
    "grpo": GRPOUpdate,
    "dapo": DAPOUpdate,
    "gspo": GSPOUpdate,
    "gkd": GKDUpdate,
    "minillm": MiniLLMUpdate,
}


def register_baselines(registry: dict[str, type[Update]]) -> None:
    """Add every baseline to `algorithms.ALGORITHMS` (called lazily by `make_update`)."""
    for name, cls in BASELINE_UPDATES.items():
        registry.setdefault(name, cls)


__all__ = [
    "BASELINE_UPDATES",
    "DAPOUpdate",
    "GKDUpdate",
    "GRPOUpdate",
    "GSPOUpdate",
    "MiniLLMUpdate",
    "PPOUpdate",
    "PolicyGradientUpdate",
    "ReinforceUpdate",
    "ValueModel",
    "algo_config",
    "register_baselines",
]
