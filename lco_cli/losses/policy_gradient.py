"""Policy-gradient baseline losses that LCO (arXiv 2603.00963, §5 "Baselines") is compared to. (~400 lines: five losses, each with its paper's config and checks.)

Every loss is a pure function of per-token tensors over *response* tokens, shape ``[B, T]``,
with a ``mask [B, T]`` (bool or float, 1 = real token, right padding allowed):

* ``logprobs``      log π_θ(a_t|s_t) of the current policy (carries the gradient),
* ``old_logprobs``  log π_old(a_t|s_t) of the behaviour policy (frozen),
* ``ref_logprobs``  log π_ref(a_t|s_t) of the reference / initial policy (frozen, optional),
* ``advantages``    ``[B, T]`` per token, or ``[B]`` per sequence (broadcast over tokens).

Each class has a frozen ``Config`` dataclass with the knobs of its paper (defaults from the
original paper or TRL, cited per field) that validates itself on construction, and a
``loss(...)`` that returns ``(scalar_loss, diagnostics)`` with ``diagnostics: dict[str, float]``.

Sign convention: every returned loss is *minimised*; ``−`` objective of the paper.
Logits-level distillation terms (GKD, MiniLLM single-step) are exposed as per-token functions
on ``[c, V]`` logit chunks so a chunked full-vocabulary engine can evaluate them row by row.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from lco_cli.losses.base import BaselineLoss, explained_variance, ratio_diagnostics, scalar
from lco_cli.losses.configs import DAPOConfig, GRPOConfig, GSPOConfig, PPOConfig, ReinforceConfig
from lco_cli.losses.estimators import (
    dynamic_sampling_keep,
    gae,
    group_normalize,
    kl_penalty_rewards,
    overlong_reward_shaping,
    reinforce_baseline,
)
from lco_cli.losses.reductions import as_float_mask, masked_mean, masked_sum, sequence_advantages, token_advantages, whiten

# =========================================================================== per-token pieces


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """Per-token PPO clipped loss (LCO paper eq. 3; decoupled bounds as DAPO's clip-higher).

    ``ℓ_t = −min(r_t·A_t, clip(r_t, 1 − ε_low, 1 + ε_high)·A_t)``. The gradient is zero when
    (A > 0 and r > 1 + ε_high) or (A < 0 and r < 1 − ε_low); elsewhere it is ``−A·∇r``.
    """
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(π_θ‖π_ref) (GRPO eq. 4): ``e^{d} − d − 1``, ``d = log π_ref − log π_θ``.

    Non-negative per token, unbiased for samples from π_θ, gradient flows through ``logprobs``.
    """
    d = ref_logprobs.detach() - logprobs
    return torch.exp(d) - d - 1.0


# =========================================================================== REINFORCE


class Reinforce(BaselineLoss):
    """REINFORCE with a baseline (Williams 1992, Machine Learning 8:229–256).

    ``L = −(1/B) Σ_i A_i Σ_t log π_θ(a_t|s_t)``.

    Sequence-level sum over the response tokens, mean over sequences; on-policy, so there is no
    importance ratio (``old_logprobs`` is accepted and ignored) and no ratio diagnostics.
    """


    Config = ReinforceConfig  # train.algo_args (lco_cli.losses.configs: torch-free, read by `lco validate`)

    def advantages(self, rewards: Tensor) -> Tensor:
        """Sequence advantages ``[B]`` from scalar rewards ``[B]``."""
        if not self.config.use_baseline:
            return rewards.detach()
        return reinforce_baseline(rewards, self.config.group_size)

    def loss(
        self,
        *,
        logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        old_logprobs: Optional[Tensor] = None,
        ref_logprobs: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        adv = token_advantages(advantages.detach(), logprobs)
        per_seq = -masked_sum(adv * logprobs, mask, dim=-1)
        loss = per_seq.mean()
        diag = {
            "loss": scalar(loss),
            "adv_mean": scalar(masked_mean(adv, mask)),
            "logprob_mean": scalar(masked_mean(logprobs.detach(), mask)),
            "response_len_mean": scalar(as_float_mask(mask, logprobs).sum(-1).mean()),
        }
        return loss, diag


# =========================================================================== PPO


class PPO(BaselineLoss):
    """PPO (Schulman et al. 2017, arXiv 1707.06347; LCO paper eq. 3) with a clipped value loss, as TRL's ``PPOTrainer``.

    ``L = mean_tokens −min(r_t A_t, clip(r_t, 1 ± ε) A_t) + vf_coef · ½ mean_tokens max((V − R)²,
    (clip(V, V_old ± ε_v) − R)²)``, ``r_t = π_θ/π_old``. Token-mean aggregation over the batch.
    The KL to the reference is *not* in the loss: put it in the rewards with
    :func:`kl_penalty_rewards`, then :meth:`advantages` (GAE + whitening).
    """


    Config = PPOConfig  # train.algo_args (lco_cli.losses.configs: torch-free, read by `lco validate`)

    def shaped_rewards(self, token_rewards: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
        """Token rewards minus ``kl_coef·(log π_old − log π_ref)``."""
        return kl_penalty_rewards(token_rewards, old_logprobs, ref_logprobs, self.config.kl_coef, mask)

    def advantages(self, token_rewards: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(advantages, returns)`` by GAE; advantages whitened if configured (returns are not)."""
        adv, returns = gae(token_rewards, values, mask, self.config.gamma, self.config.lam)
        if self.config.whiten_advantages:
            adv = whiten(adv, mask)
        return adv, returns

    def value_loss(self, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(½ mean max((V − R)², (V_clip − R)²), value_clipfrac)`` (TRL PPO)."""
        cv = self.config.cliprange_value
        v_clipped = torch.clamp(values, old_values - cv, old_values + cv)
        l1, l2 = (values - returns) ** 2, (v_clipped - returns) ** 2
        loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
        clipfrac = masked_mean((l2 > l1).to(values.dtype), mask)
        return loss, clipfrac.detach()

    def loss(
        self,
        *,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        values: Tensor,
        old_values: Tensor,
        returns: Tensor,
        ref_logprobs: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        eps = self.config.cliprange
        adv = token_advantages(advantages.detach(), logprobs)
        log_ratio = logprobs - old_logprobs.detach()
        pg_loss = masked_mean(clipped_surrogate(torch.exp(log_ratio), adv, eps, eps), mask)
        vf_loss, vf_clipfrac = self.value_loss(values, old_values.detach(), returns.detach(), mask)
        loss = pg_loss + self.config.vf_coef * vf_loss
        diag = {"loss": scalar(loss), "pg_loss": scalar(pg_loss), "value_loss": scalar(vf_loss)}
        diag.update(ratio_diagnostics(log_ratio.detach(), adv, mask, eps, eps))
        diag["value_clipfrac"] = scalar(vf_clipfrac)
        diag["explained_variance"] = explained_variance(values.detach(), returns.detach(), mask)
        if ref_logprobs is not None:
            diag["kl_ref"] = scalar(masked_mean(logprobs.detach() - ref_logprobs.detach(), mask))
        return loss, diag


# =========================================================================== GRPO


def _aggregate(per_token: Tensor, mask: Tensor, loss_type: str, max_completion_length: Optional[int]) -> Tensor:
    """TRL's GRPO aggregations.

    * ``grpo``: per-sequence token mean, then batch mean (GRPO eq. 3, ``1/G Σ_i 1/|o_i| Σ_t``),
    * ``bnpo`` / ``dapo``: all-token mean ``Σ_{i,t} / Σ_i |o_i|`` (DAPO §3.3 token-level loss),
    * ``dr_grpo``: ``Σ_{i,t} / (B · L_max)`` with a constant L_max (Dr. GRPO; TRL).
    """
    if loss_type == "grpo":
        return masked_mean(per_token, mask, dim=-1).mean()
    if loss_type in ("bnpo", "dapo"):
        return masked_mean(per_token, mask)
    if loss_type == "dr_grpo":
        length = max_completion_length or per_token.shape[1]
        return masked_sum(per_token, mask) / (per_token.shape[0] * length)
    raise ValueError(f"unknown loss_type {loss_type!r}")


class _GroupAdvantages:
    """``advantages(rewards)``: group-normalised sequence advantages from the config."""

    config: Any

    def advantages(self, rewards: Tensor) -> Tensor:
        c = self.config
        return group_normalize(rewards, c.group_size, c.adv_eps, getattr(c, "scale_rewards", True))


class GRPO(_GroupAdvantages, BaselineLoss):
    """GRPO (Shao et al. 2024, arXiv 2402.03300, eq. 3): clipped token ratio, group-normalised sequence advantage,
    KL to the reference in the loss with the k3 estimator (eq. 4).

    ``ℓ_{i,t} = −min(r A_i, clip(r, 1−ε, 1+ε) A_i) + β·(e^{ref−logπ} − (ref − logπ) − 1)``,
    aggregated by ``loss_type`` (``grpo`` = per-sequence mean then batch mean, the original).
    """


    Config = GRPOConfig  # train.algo_args (lco_cli.losses.configs: torch-free, read by `lco validate`)

    def loss(self, *, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
             ref_logprobs: Optional[Tensor] = None) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        eps_low = c.epsilon
        eps_high = c.epsilon if c.epsilon_high is None else c.epsilon_high
        adv = token_advantages(advantages.detach(), logprobs)
        log_ratio = logprobs - old_logprobs.detach()
        per_token = clipped_surrogate(torch.exp(log_ratio), adv, eps_low, eps_high)
        diag: dict[str, float] = {}
        if c.beta > 0:
            if ref_logprobs is None:
                raise ValueError("GRPO with beta > 0 needs ref_logprobs")
            kl = k3_kl(logprobs, ref_logprobs)
            per_token = per_token + c.beta * kl
            diag["kl_ref"] = scalar(masked_mean(kl.detach(), mask))
        loss = _aggregate(per_token, mask, c.loss_type, c.max_completion_length)
        diag["loss"] = scalar(loss)
        diag.update(ratio_diagnostics(log_ratio.detach(), adv, mask, eps_low, eps_high))
        return loss, diag


# =========================================================================== DAPO


class DAPO(_GroupAdvantages, BaselineLoss):
    """DAPO (Yu et al. 2025, arXiv 2503.14476, eq. 8; overlong eq. 13): decoupled clip-higher (ε_low = 0.2, ε_high = 0.28),
    token-level aggregation ``Σ_{i,t} ℓ_{i,t} / Σ_i |o_i|`` (§3.3), no KL term, group-normalised
    advantages, plus dynamic sampling (:func:`dynamic_sampling_keep`) and soft overlong
    punishment (:meth:`shape_rewards`) applied by the caller before :meth:`advantages`.
    """


    Config = DAPOConfig  # train.algo_args (lco_cli.losses.configs: torch-free, read by `lco validate`)

    def shape_rewards(self, rewards: Tensor, lengths: Tensor) -> Tensor:
        """Task rewards plus the soft overlong punishment (if enabled)."""
        if not self.config.overlong_shaping:
            return rewards
        pen = overlong_reward_shaping(lengths, self.config.max_response_length, self.config.overlong_cache)
        return rewards + pen.to(rewards.dtype)

    def keep(self, rewards: Tensor) -> Tensor:
        """Per-sample bool mask ``[B]`` kept by dynamic sampling (all True when disabled)."""
        if not self.config.dynamic_sampling:
            return torch.ones_like(rewards, dtype=torch.bool)
        g = self.config.group_size
        return dynamic_sampling_keep(rewards, g).repeat_interleave(g)

    def loss(self, *, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
             ref_logprobs: Optional[Tensor] = None) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        adv = token_advantages(advantages.detach(), logprobs)
        log_ratio = logprobs - old_logprobs.detach()
        per_token = clipped_surrogate(torch.exp(log_ratio), adv, c.eps_low, c.eps_high)
        loss = _aggregate(per_token, mask, "dapo", None)
        diag = {"loss": scalar(loss)}
        diag.update(ratio_diagnostics(log_ratio.detach(), adv, mask, c.eps_low, c.eps_high))
        return loss, diag


# =========================================================================== GSPO


class GSPO(_GroupAdvantages, BaselineLoss):
    """GSPO (Zheng et al. 2025, arXiv 2507.18071, §4.1): sequence-level, length-normalised importance ratio

    ``s_i = (π_θ(y_i|x) / π_old(y_i|x))^{1/|y_i|} = exp(mean_t (log π_θ − log π_old))``,
    ``L = −(1/G) Σ_i min(s_i Â_i, clip(s_i, 1 − ε_low, 1 + ε_high) Â_i)`` with tiny bounds
    (3e-4, 4e-4) and group-normalised Â_i. ``variant="token"`` is GSPO-token (§4.3):
    ``s_{i,t} = sg[s_i]·π_θ(y_t)/sg[π_θ(y_t)]`` — same value as s_i, but each token's gradient is
    weighted by its own (possibly token-level) advantage; loss averaged per sequence.
    """


    Config = GSPOConfig  # train.algo_args (lco_cli.losses.configs: torch-free, read by `lco validate`)

    def loss(self, *, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
             ref_logprobs: Optional[Tensor] = None) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        adv = token_advantages(advantages.detach(), logprobs)
        seq_log_ratio = masked_mean(logprobs - old_logprobs.detach(), mask, dim=-1)  # log s_i, [B]
        if c.variant == "token":
            # value log s_i, gradient ∇log π_θ(y_t): sg[s_i] · π_θ / sg[π_θ]
            log_w = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)
        else:
            log_w = seq_log_ratio.unsqueeze(-1).expand_as(logprobs)
        per_token = clipped_surrogate(torch.exp(log_w), adv, c.eps_low, c.eps_high)
        loss = _aggregate(per_token, mask, "grpo", None)
        seq_valid = mask.bool().any(dim=-1)
        seq_adv = sequence_advantages(advantages.detach(), mask)
        diag = {"loss": scalar(loss)}
        diag.update(ratio_diagnostics(seq_log_ratio.detach(), seq_adv, seq_valid, c.eps_low, c.eps_high))
        return loss, diag
