"""Distillation baselines (GKD, MiniLLM) and their per-token full-vocabulary terms on ``[c, V]`` logit chunks."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lco_cli.losses.base import BaselineLoss, ratio_diagnostics, scalar
from lco_cli.losses.configs import GKDConfig, MiniLLMConfig
from lco_cli.losses.policy_gradient import clipped_surrogate
from lco_cli.losses.reductions import as_float_mask, masked_mean, token_advantages, whiten


def _upcast(x: Tensor) -> Tensor:
    # half-precision logits are upcast for the softmax; float64 stays float64 (tests, Hessians)
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Row-wise ``KL(p‖q) = Σ_V p (log p − log q)`` over the last dim, with ``0·log 0 := 0``.

    Zero-probability entries of ``p`` (e.g. ``−inf`` logits) are masked *before* multiplying so
    neither the value nor the gradient picks up ``0·∞ = NaN``.
    """
    p = log_p.exp()
    diff = (log_p - log_q).masked_fill(p == 0, 0.0)
    return (p * diff).sum(dim=-1)


def _mixture_log_probs(log_s: Tensor, log_t: Tensor, beta: float) -> Tensor:
    """``log(β·P_T + (1 − β)·P_S)`` — mix probabilities, not log-probs (huggingface/trl#2202).

    Entries where both are ``−inf`` are neutralised first: ``logaddexp(−inf, −inf)`` has a NaN
    gradient, and those entries are dropped by the ``0·log 0 = 0`` rule anyway.
    """
    both_zero = torch.isneginf(log_s) & torch.isneginf(log_t)
    log_s, log_t = log_s.masked_fill(both_zero, 0.0), log_t.masked_fill(both_zero, 0.0)
    return torch.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))


def gkd_token_loss(
    student_logits: Tensor, teacher_logits: Tensor, beta: float = 0.5, temperature: float = 1.0
) -> Tensor:
    """Generalised JSD of GKD (Agarwal et al. 2024, eq. 1) per token, full vocabulary: ``[c, V] → [c]``.

    TRL ``GKDTrainer.generalized_jsd_loss`` semantics (after huggingface/trl#3043), with
    ``P_T = softmax(teacher/τ)``, ``P_S = softmax(student/τ)``:

    * ``M = β·P_T + (1 − β)·P_S`` and ``JSD(β) = β·KL(P_T‖M) + (1 − β)·KL(P_S‖M)`` for 0 < β < 1,
    * ``β = 0`` → forward KL ``KL(P_T‖P_S)`` (mean-seeking, = token-level KD / SFT on teacher),
    * ``β = 1`` → reverse KL ``KL(P_S‖P_T)`` (mode-seeking).

    The endpoints are special cases: the interior formula tends to 0 (not to the KLs) as β → 0
    or 1 (≈ β·KL(P_T‖P_S) near 0), exactly as in TRL. Rows are independent, so any chunk of
    tokens can be evaluated alone. The teacher is frozen (detached).
    """
    log_s = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    log_t = F.log_softmax(_upcast(teacher_logits.detach()) / temperature, dim=-1)
    if beta == 0.0:
        return kl_from_log_probs(log_t, log_s)
    if beta == 1.0:
        return kl_from_log_probs(log_s, log_t)
    log_m = _mixture_log_probs(log_s, log_t, beta)
    return beta * kl_from_log_probs(log_t, log_m) + (1.0 - beta) * kl_from_log_probs(log_s, log_m)


def minillm_token_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """MiniLLM single-step term (Gu et al. 2023, §2.2 "Single-Step Decomposition", ``(∇L)_Single``).

    Exact per-step reverse KL:

    ``KL(q_θ(·|y_<t) ‖ p(·|y_<t)) = Σ_V q_θ (log q_θ − log p)``, ``[c, V] → [c]``; its gradient
    is the single-step part of the reverse-KL policy gradient (the expectation over y_t is
    taken analytically, which removes its sampling variance). Teacher detached.
    """
    log_q = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(_upcast(teacher_logits.detach()) / temperature, dim=-1)
    return kl_from_log_probs(log_q, log_p)


def minillm_long_term_rewards(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    length_norm: bool = True,
    include_current: bool = False,
) -> Tensor:
    """MiniLLM long-term reward-to-go (Gu et al. 2023, §2.2 ``(∇L)_Long`` with "Length Normalization").

    Per-token reward ``r_t = log p(y_t|y_<t) − log q_θ(y_t|y_<t)`` (teacher minus student on the
    sampled token). The return at position t is ``R_{t+1} = Σ_{t'>t} r_{t'}``; with
    ``length_norm`` it is divided by the number of summed tokens (``R^Norm``, 0 when nothing is
    left). ``include_current=True`` sums from t on (``R_t``), as LMOps' released code does.
    Detached, padded positions are 0.
    """
    m = as_float_mask(mask, student_logprobs)
    r = (teacher_logprobs.detach() - student_logprobs.detach()) * m
    # suffix sums via flip-cumsum: Σ_{t' ≥ t}
    suffix = torch.flip(torch.cumsum(torch.flip(r, [1]), 1), [1])
    count = torch.flip(torch.cumsum(torch.flip(m, [1]), 1), [1])
    if not include_current:
        suffix, count = suffix - r, count - m
    out = suffix / count.clamp(min=1.0) if length_norm else suffix
    return out * m


def minillm_mix_weights(old_logprobs: Tensor, teacher_logprobs: Tensor, alpha: float = 0.2) -> Tensor:
    """MiniLLM teacher-mixed sampling importance weight (Gu et al. 2023, §2.2 "Teacher-Mixed Sampling").

    Samples come from ``p̃ = α·p + (1 − α)·q_θ``; the per-token weight is
    ``w_t = q_θ(y_t|y_<t) / p̃(y_t|y_<t)`` (token-level approximation, evaluated with the
    behaviour policy, detached). ``α = 0`` gives ``w = 1``.
    """
    old = old_logprobs.detach()
    if alpha == 0.0:
        return torch.ones_like(old)
    log_mix = torch.logaddexp(old + math.log1p(-alpha), teacher_logprobs.detach() + math.log(alpha))
    return torch.exp(old - log_mix)


# =========================================================================== GKD


class GKD(BaselineLoss):
    """GKD (Agarwal et al. 2024, arXiv 2306.13649, eq. 1 and Alg. 1): on-policy distillation.

    Per token, over the full vocabulary: :func:`gkd_token_loss` (TRL β semantics: β = 0 forward
    KL(teacher‖student), β = 1 reverse KL(student‖teacher), 0.5 = symmetric JSD). With
    probability ``lmbda`` the batch is sampled from the student (on-policy), otherwise taken from
    the fixed dataset — the sampler reads that knob. The loss is the token mean (TRL
    ``batchmean`` over completion tokens).
    """


    Config = GKDConfig  # train.algo_args (lco_cli.losses.configs: torch-free, read by `lco validate`)

    def token_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """``[c, V] → [c]`` generalised JSD with this config's β and temperature."""
        return gkd_token_loss(student_logits, teacher_logits, self.config.beta, self.config.temperature)

    def loss(self, *, token_losses: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Token mean of per-token divergences ``[B, T]`` (from :meth:`token_loss`)."""
        loss = masked_mean(token_losses, mask)
        worst = token_losses.detach().masked_fill(~mask.bool(), 0.0).max()
        return loss, {"loss": scalar(loss), "token_loss_max": scalar(worst)}


# =========================================================================== MiniLLM


class MiniLLM(BaselineLoss):
    """MiniLLM (Gu et al. 2023, arXiv 2306.08543, §2.2): reverse-KL policy gradient toward a teacher p.

    ``L = mean_t KL(q_θ(·|y_<t)‖p(·|y_<t))``  (single-step part, exact, :func:`minillm_token_loss`)
    ``  + mean_t −min(ρ_t Â_t, clip(ρ_t, 1 ± ε) Â_t)``,  ``ρ_t = (q_θ/q_old)(y_t) · w_t``
    with Â_t the length-normalised long-term reward-to-go (:meth:`advantages`) and ``w_t`` the
    teacher-mixed-sampling weight (:meth:`mix_weights`). As in the LMOps release, the clip is on
    the weighted ratio ``ρ_t`` and the single-step term is unweighted.
    """


    Config = MiniLLMConfig  # train.algo_args (lco_cli.losses.configs: torch-free, read by `lco validate`)

    def token_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """``[c, V] → [c]`` exact per-step reverse KL (single-step part)."""
        return minillm_token_loss(student_logits, teacher_logits, self.config.temperature)

    def advantages(self, student_logprobs: Tensor, teacher_logprobs: Tensor, mask: Tensor) -> Tensor:
        """Long-term rewards R_{t+1} (length-normalised, optionally whitened), ``[B, T]``."""
        r = minillm_long_term_rewards(student_logprobs, teacher_logprobs, mask, self.config.length_norm)
        return whiten(r, mask) if self.config.whiten_advantages else r

    def mix_weights(self, old_logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
        """Importance weights ``q_old / p̃`` for teacher-mixed samples, ``[B, T]``."""
        return minillm_mix_weights(old_logprobs, teacher_logprobs, self.config.teacher_mix_alpha)

    def loss(
        self,
        *,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        single_step_kl: Optional[Tensor] = None,
        mix_weights: Optional[Tensor] = None,
        ref_logprobs: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        adv = token_advantages(advantages.detach(), logprobs)
        log_ratio = logprobs - old_logprobs.detach()
        if mix_weights is not None:
            log_ratio = log_ratio + torch.log(mix_weights.detach())
        pg_loss = masked_mean(clipped_surrogate(torch.exp(log_ratio), adv, c.clip, c.clip), mask)
        loss, diag = pg_loss, {"pg_loss": scalar(pg_loss)}
        if c.single_step_reg:
            if single_step_kl is None:
                raise ValueError("MiniLLM with single_step_reg needs single_step_kl [B, T] (minillm_token_loss)")
            reg = masked_mean(single_step_kl, mask)
            loss = loss + reg
            diag["single_step_kl"] = scalar(reg)
        diag["loss"] = scalar(loss)
        diag.update(ratio_diagnostics(log_ratio.detach(), adv, mask, c.clip, c.clip))
        return loss, diag
