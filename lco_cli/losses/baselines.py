"""Baseline RL post-training losses that LCO (arXiv 2603.00963, §5 "Baselines") is compared to.

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

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lco_cli.errors import ConfigError

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "whiten",
    "reinforce_baseline",
    "group_normalize",
    "gae",
    "kl_penalty_rewards",
    "overlong_reward_shaping",
    "dynamic_sampling_keep",
    "clipped_surrogate",
    "k3_kl",
    "kl_from_log_probs",
    "gkd_token_loss",
    "minillm_token_loss",
    "minillm_long_term_rewards",
    "minillm_mix_weights",
    "BaselineLoss",
    "Reinforce",
    "PPO",
    "GRPO",
    "DAPO",
    "GSPO",
    "GKD",
    "MiniLLM",
    "ALGOS",
]


# =========================================================================== masked reductions


def _as_float_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(dtype=like.dtype if like.is_floating_point() else torch.float32)


def masked_sum(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """``Σ x·mask`` over all entries, or over ``dim``."""
    m = _as_float_mask(mask, x)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """``Σ x·mask / Σ mask``; the count is clamped to ≥ 1 so an empty mask gives 0, not NaN."""
    m = _as_float_mask(mask, x)
    count = m.sum() if dim is None else m.sum(dim=dim)
    return masked_sum(x, m, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over the masked entries; Bessel-corrected like TRL's ``masked_var``."""
    m = _as_float_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        var = var * n / (n - 1).clamp(min=1.0)  # n ≤ 1: left uncorrected instead of ÷0
    return var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """TRL ``masked_whiten``: ``(x − mean) / sqrt(var + eps)`` over masked entries.

    Statistics use masked entries only (unbiased variance); padded positions come back as 0.
    With ``shift_mean=False`` the mean is added back (only the scale is normalised).
    """
    m = _as_float_mask(mask, x)
    mean, var = masked_mean(x, m), masked_var(x, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def _token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """Broadcast ``[B]`` sequence advantages to ``[B, T]``; pass ``[B, T]`` through."""
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages.unsqueeze(-1).expand_as(like)
    if advantages.shape == like.shape:
        return advantages
    raise ValueError(f"advantages must be [B] or [B, T]={tuple(like.shape)}, got {tuple(advantages.shape)}")


def _sequence_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` advantages; a ``[B, T]`` input is reduced by its masked token mean."""
    return advantages if advantages.dim() == 1 else masked_mean(advantages, mask, dim=-1)


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B], got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"batch of {rewards.numel()} is not a whole number of groups of {group_size}")
    return rewards.reshape(-1, group_size)


# =========================================================================== advantage helpers


def reinforce_baseline(rewards: Tensor, group_size: int = 1) -> Tensor:
    """REINFORCE advantage ``A_i = r_i − b_i`` (Williams 1992, baseline ``b``).

    * ``group_size == 1``: ``b = mean_batch(r)`` (one response per prompt).
    * ``group_size > 1`` : RLOO leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024)
      ``b_i = (Σ_{j∈g} r_j − r_i) / (G − 1)`` — unbiased because b_i does not depend on r_i.
    """
    rewards = rewards.detach()
    if group_size == 1:
        return rewards - rewards.mean()
    g = _grouped(rewards, group_size)
    loo = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - loo).reshape(-1)


def group_normalize(rewards: Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """GRPO outcome advantage (Shao et al. 2024, §4.1.2): ``A_i = (r_i − mean_g) / (std_g + eps)``.

    ``std`` is the unbiased group std (``torch.std``, as TRL); ``eps=1e-4`` is TRL's. A group with
    equal rewards gets ``A = 0``. ``scale=False`` drops the division (Dr. GRPO, Liu et al. 2025).
    """
    if group_size < 2:
        raise ValueError("group_normalize needs group_size >= 2 (the std of one sample is undefined)")
    g = _grouped(rewards.detach(), group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded rows.

    ``δ_t = r_t + γ·V_{t+1} − V_t`` and ``A_t = δ_t + γλ·A_{t+1}``, with ``V_{t+1} = 0`` after a
    row's last real token (episode end) and all padded positions zeroed. Returns
    ``(advantages, returns = A + V)``, both detached and masked.
    """
    m = _as_float_mask(mask, values)
    r = token_rewards.detach() * m
    v = values.detach() * m
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)  # 0 beyond the end / padding
    delta = (r + gamma * next_v - v) * m
    running = torch.zeros_like(v[:, 0])
    out = []
    for t in reversed(range(v.shape[1])):
        running = (delta[:, t] + gamma * lam * running) * m[:, t]
        out.append(running)
    adv = torch.stack(out[::-1], dim=1)
    return adv, (adv + v) * m


def kl_penalty_rewards(
    token_rewards: Tensor,
    logprobs_old: Tensor,
    ref_logprobs: Tensor,
    kl_coef: float = 0.05,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Dense per-token KL-shaped reward ``r_t − kl_coef·(log π_old − log π_ref)``.

    The PPO-RLHF reward (Ouyang et al. 2022; token-level as in Zhong et al. 2024 / TRL's
    ``non_score_reward``, k1 estimator); ``kl_coef=0.05`` is TRL's ``PPOConfig.kl_coef``.
    The caller adds the sequence score to ``token_rewards`` (e.g. at the last real token).
    """
    shaped = token_rewards.detach() - kl_coef * (logprobs_old.detach() - ref_logprobs.detach())
    return shaped if mask is None else shaped * _as_float_mask(mask, shaped)


def overlong_reward_shaping(lengths: Tensor, max_len: int = 20480, cache: int = 4096) -> Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), added to the task reward.

    ``R(L) = 0`` if ``L ≤ L_max − L_cache``; ``((L_max − L_cache) − L) / L_cache`` inside the
    cache window ``(L_max − L_cache, L_max]``; ``−1`` if ``L > L_max``. Defaults are DAPO's
    (``L_max = 20480``, ``L_cache = 4096``).
    """
    if not 0 <= cache <= max_len:
        raise ValueError(f"need 0 <= cache <= max_len, got cache={cache}, max_len={max_len}")
    L = lengths.to(torch.float64) if not lengths.is_floating_point() else lengths
    start = max_len - cache
    ramp = (start - L) / max(cache, 1)  # never selected when cache == 0 (empty window)
    zero = torch.zeros_like(L)
    out = torch.where(L <= start, zero, torch.where(L <= max_len, ramp, zero - 1.0))
    return out.to(torch.float32) if not lengths.is_floating_point() else out


def dynamic_sampling_keep(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, eq. 8 constraint ``0 < |{o_i equivalent to a}| < G``).

    Returns a bool mask ``[B / G]`` of groups whose rewards are not all equal (all-equal groups
    have zero group-normalised advantage and only dilute the batch). Use
    ``keep.repeat_interleave(group_size)`` for a per-sample mask.
    """
    g = _grouped(rewards.detach(), group_size)
    return g.amax(dim=1) > g.amin(dim=1)


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
    m = _as_float_mask(mask, student_logprobs)
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


# =========================================================================== diagnostics


def _f(x: Tensor | float) -> float:
    return float(x.detach().item()) if isinstance(x, Tensor) else float(x)


@torch.no_grad()
def _ratio_diagnostics(
    log_ratio: Tensor, advantages: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> dict[str, float]:
    """Clip fractions (the gradient-zeroing branch only), ratio stats and TRL's ``approx_kl``.

    ``clipfrac_low``: A < 0 and r < 1 − ε_low; ``clipfrac_high``: A > 0 and r > 1 + ε_high.
    ``approx_kl = ½·E[(log r)²]`` (TRL PPO's k2 estimator of KL(π_old‖π_θ)). One host sync.
    """
    valid = mask.bool()
    ratio = log_ratio.exp()
    m = valid.to(ratio.dtype)
    low = ((ratio < 1.0 - eps_low) & (advantages < 0)).to(ratio.dtype) * m
    high = ((ratio > 1.0 + eps_high) & (advantages > 0)).to(ratio.dtype) * m
    any_valid = valid.any()
    stats = torch.stack(
        [
            masked_mean(low + high, m),
            masked_mean(low, m),
            masked_mean(high, m),
            masked_mean(ratio, m),
            torch.where(any_valid, ratio.masked_fill(~valid, math.inf).min(), 0.0),
            torch.where(any_valid, ratio.masked_fill(~valid, -math.inf).max(), 0.0),
            0.5 * masked_mean(log_ratio**2, m),
        ]
    ).tolist()
    keys = ("clipfrac", "clipfrac_low", "clipfrac_high", "ratio_mean", "ratio_min", "ratio_max", "approx_kl")
    return dict(zip(keys, stats))


@torch.no_grad()
def _explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 − Var[R − V] / Var[R]`` over masked tokens (NaN if the returns are constant)."""
    var_r = masked_var(returns, mask, unbiased=False)
    if var_r == 0:
        return float("nan")
    return _f(1.0 - masked_var(returns - values, mask, unbiased=False) / var_r)


# =========================================================================== config base


class _Checks:
    """Collects every config problem so one :class:`ConfigError` lists them all."""

    def __init__(self, owner: str):
        self.owner, self.problems = owner, []

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(f"{self.owner}.{message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(f"invalid {self.owner} config: {'; '.join(self.problems)}", self.problems)


@dataclass(frozen=True)
class _Config:
    """Base: frozen, validated in ``__post_init__`` (raises :class:`ConfigError`)."""

    def __post_init__(self) -> None:
        checks = _Checks(type(self).__qualname__.split(".")[0])
        self._check(checks)
        checks.raise_if_any()

    def _check(self, c: _Checks) -> None:  # overridden per algorithm
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_group(c: _Checks, group_size: int, minimum: int) -> None:
    c.require(isinstance(group_size, int) and group_size >= minimum, f"group_size must be an int >= {minimum}")


class BaselineLoss:
    """Common constructor: ``Algo()``, ``Algo(Algo.Config(...))`` or ``Algo(field=value, ...)``."""

    Config: ClassVar[type] = _Config
    name: ClassVar[str] = ""
    #: keyword arguments ``loss`` requires (besides ``mask``), for the training loop's checks
    inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Optional[_Config] = None, **overrides: Any):
        if config is None:
            config = self.Config(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} expects {type(self).__name__}.Config, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


# =========================================================================== REINFORCE


class Reinforce(BaselineLoss):
    """REINFORCE with a baseline (Williams 1992, Machine Learning 8:229–256).

    ``L = −(1/B) Σ_i A_i Σ_t log π_θ(a_t|s_t)``.

    Sequence-level sum over the response tokens, mean over sequences; on-policy, so there is no
    importance ratio (``old_logprobs`` is accepted and ignored) and no ratio diagnostics.
    """

    name = "reinforce"
    inputs = ("logprobs", "advantages")

    @dataclass(frozen=True)
    class Config(_Config):
        #: responses per prompt: 1 → batch-mean baseline; >1 → RLOO leave-one-out baseline
        group_size: int = 1
        #: subtract the baseline (Williams 1992's b); False → raw rewards
        use_baseline: bool = True

        def _check(self, c: _Checks) -> None:
            _check_group(c, self.group_size, 1)

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
        adv = _token_advantages(advantages.detach(), logprobs)
        per_seq = -masked_sum(adv * logprobs, mask, dim=-1)
        loss = per_seq.mean()
        diag = {
            "loss": _f(loss),
            "adv_mean": _f(masked_mean(adv, mask)),
            "logprob_mean": _f(masked_mean(logprobs.detach(), mask)),
            "response_len_mean": _f(_as_float_mask(mask, logprobs).sum(-1).mean()),
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

    name = "ppo"
    inputs = ("logprobs", "old_logprobs", "advantages", "values", "old_values", "returns")

    @dataclass(frozen=True)
    class Config(_Config):
        cliprange: float = 0.2  #: ε (Schulman 2017; TRL)
        cliprange_value: float = 0.2  #: value clipping (TRL)
        vf_coef: float = 0.1  #: value-loss weight (TRL)
        gamma: float = 1.0  #: discount (TRL)
        lam: float = 0.95  #: GAE λ (TRL)
        kl_coef: float = 0.05  #: per-token KL reward penalty (TRL)
        whiten_advantages: bool = True  #: TRL whitens GAE advantages
        value_lr: Optional[float] = None  #: value model's own learning rate; None → train.lr (TRL: one lr)

        def _check(self, c: _Checks) -> None:
            c.require(self.value_lr is None or self.value_lr > 0, "value_lr must be > 0")
            c.require(0 < self.cliprange < 1, "cliprange must be in (0, 1)")
            c.require(self.cliprange_value > 0, "cliprange_value must be > 0")
            c.require(self.vf_coef >= 0, "vf_coef must be >= 0")
            c.require(0 <= self.gamma <= 1, "gamma must be in [0, 1]")
            c.require(0 <= self.lam <= 1, "lam must be in [0, 1]")
            c.require(self.kl_coef >= 0, "kl_coef must be >= 0")

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
        adv = _token_advantages(advantages.detach(), logprobs)
        log_ratio = logprobs - old_logprobs.detach()
        pg_loss = masked_mean(clipped_surrogate(torch.exp(log_ratio), adv, eps, eps), mask)
        vf_loss, vf_clipfrac = self.value_loss(values, old_values.detach(), returns.detach(), mask)
        loss = pg_loss + self.config.vf_coef * vf_loss
        diag = {"loss": _f(loss), "pg_loss": _f(pg_loss), "value_loss": _f(vf_loss)}
        diag.update(_ratio_diagnostics(log_ratio.detach(), adv, mask, eps, eps))
        diag["value_clipfrac"] = _f(vf_clipfrac)
        diag["explained_variance"] = _explained_variance(values.detach(), returns.detach(), mask)
        if ref_logprobs is not None:
            diag["kl_ref"] = _f(masked_mean(logprobs.detach() - ref_logprobs.detach(), mask))
        return loss, diag


# =========================================================================== GRPO


GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


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

    name = "grpo"
    inputs = ("logprobs", "old_logprobs", "advantages", "ref_logprobs")

    @dataclass(frozen=True)
    class Config(_Config):
        epsilon: float = 0.2  #: ε (GRPO; TRL)
        epsilon_high: Optional[float] = None  #: upper bound; None → epsilon (symmetric)
        beta: float = 0.04  #: β_KL (GRPO paper; TRL's old default)
        loss_type: str = "grpo"  #: grpo | bnpo | dr_grpo (TRL)
        group_size: int = 4  #: responses per prompt (LCO paper §5 setup)
        scale_rewards: bool = True  #: divide by group std (False = Dr. GRPO)
        adv_eps: float = 1e-4  #: std epsilon (TRL)
        max_completion_length: Optional[int] = None  #: dr_grpo normaliser; None → T

        def _check(self, c: _Checks) -> None:
            c.require(0 < self.epsilon < 1, "epsilon must be in (0, 1)")
            c.require(self.epsilon_high is None or self.epsilon_high > 0, "epsilon_high must be > 0")
            c.require(self.beta >= 0, "beta must be >= 0")
            c.require(self.loss_type in GRPO_LOSS_TYPES, f"loss_type must be one of {GRPO_LOSS_TYPES}")
            _check_group(c, self.group_size, 2)
            c.require(self.adv_eps >= 0, "adv_eps must be >= 0")
            c.require(
                self.max_completion_length is None or self.max_completion_length > 0,
                "max_completion_length must be > 0",
            )

    def loss(
        self,
        *,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        ref_logprobs: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        eps_low = c.epsilon
        eps_high = c.epsilon if c.epsilon_high is None else c.epsilon_high
        adv = _token_advantages(advantages.detach(), logprobs)
        log_ratio = logprobs - old_logprobs.detach()
        per_token = clipped_surrogate(torch.exp(log_ratio), adv, eps_low, eps_high)
        diag: dict[str, float] = {}
        if c.beta > 0:
            if ref_logprobs is None:
                raise ValueError("GRPO with beta > 0 needs ref_logprobs")
            kl = k3_kl(logprobs, ref_logprobs)
            per_token = per_token + c.beta * kl
            diag["kl_ref"] = _f(masked_mean(kl.detach(), mask))
        loss = _aggregate(per_token, mask, c.loss_type, c.max_completion_length)
        diag["loss"] = _f(loss)
        diag.update(_ratio_diagnostics(log_ratio.detach(), adv, mask, eps_low, eps_high))
        return loss, diag


# =========================================================================== DAPO


class DAPO(_GroupAdvantages, BaselineLoss):
    """DAPO (Yu et al. 2025, arXiv 2503.14476, eq. 8; overlong eq. 13): decoupled clip-higher (ε_low = 0.2, ε_high = 0.28),
    token-level aggregation ``Σ_{i,t} ℓ_{i,t} / Σ_i |o_i|`` (§3.3), no KL term, group-normalised
    advantages, plus dynamic sampling (:func:`dynamic_sampling_keep`) and soft overlong
    punishment (:meth:`shape_rewards`) applied by the caller before :meth:`advantages`.
    """

    name = "dapo"
    inputs = ("logprobs", "old_logprobs", "advantages")

    @dataclass(frozen=True)
    class Config(_Config):
        eps_low: float = 0.2  #: DAPO §3.1
        eps_high: float = 0.28  #: DAPO §3.1 (clip-higher)
        group_size: int = 4  #: responses per prompt (LCO paper §5 setup; DAPO used 16)
        adv_eps: float = 1e-4  #: std epsilon (TRL)
        dynamic_sampling: bool = True  #: drop groups with all-equal rewards (§3.2)
        overlong_shaping: bool = True  #: soft overlong punishment (§3.4)
        max_response_length: int = 20480  #: L_max (DAPO §4.1)
        overlong_cache: int = 4096  #: L_cache (DAPO §4.1)
        max_gen_batches: int = 3  #: rollout rounds per step for dynamic sampling, the first included (verl's recipe: 10)

        def _check(self, c: _Checks) -> None:
            c.require(0 < self.eps_low < 1, "eps_low must be in (0, 1)")
            c.require(self.eps_high > 0, "eps_high must be > 0")
            _check_group(c, self.group_size, 2)
            c.require(self.adv_eps >= 0, "adv_eps must be >= 0")
            c.require(self.max_response_length > 0, "max_response_length must be > 0")
            c.require(isinstance(self.max_gen_batches, int) and self.max_gen_batches >= 1, "max_gen_batches must be an int >= 1")
            c.require(
                0 <= self.overlong_cache <= self.max_response_length,
                "overlong_cache must be in [0, max_response_length]",
            )

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

    def loss(
        self,
        *,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        ref_logprobs: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        adv = _token_advantages(advantages.detach(), logprobs)
        log_ratio = logprobs - old_logprobs.detach()
        per_token = clipped_surrogate(torch.exp(log_ratio), adv, c.eps_low, c.eps_high)
        loss = _aggregate(per_token, mask, "dapo", None)
        diag = {"loss": _f(loss)}
        diag.update(_ratio_diagnostics(log_ratio.detach(), adv, mask, c.eps_low, c.eps_high))
        return loss, diag


# =========================================================================== GSPO


GSPO_VARIANTS = ("sequence", "token")


class GSPO(_GroupAdvantages, BaselineLoss):
    """GSPO (Zheng et al. 2025, arXiv 2507.18071, §4.1): sequence-level, length-normalised importance ratio

    ``s_i = (π_θ(y_i|x) / π_old(y_i|x))^{1/|y_i|} = exp(mean_t (log π_θ − log π_old))``,
    ``L = −(1/G) Σ_i min(s_i Â_i, clip(s_i, 1 − ε_low, 1 + ε_high) Â_i)`` with tiny bounds
    (3e-4, 4e-4) and group-normalised Â_i. ``variant="token"`` is GSPO-token (§4.3):
    ``s_{i,t} = sg[s_i]·π_θ(y_t)/sg[π_θ(y_t)]`` — same value as s_i, but each token's gradient is
    weighted by its own (possibly token-level) advantage; loss averaged per sequence.
    """

    name = "gspo"
    inputs = ("logprobs", "old_logprobs", "advantages")

    @dataclass(frozen=True)
    class Config(_Config):
        eps_low: float = 3e-4  #: GSPO §5.1
        eps_high: float = 4e-4  #: GSPO §5.1
        variant: str = "sequence"  #: sequence (GSPO) | token (GSPO-token)
        group_size: int = 4  #: responses per prompt (LCO paper §5 setup)
        adv_eps: float = 1e-4  #: std epsilon (TRL)

        def _check(self, c: _Checks) -> None:
            c.require(0 < self.eps_low < 1, "eps_low must be in (0, 1)")
            c.require(self.eps_high > 0, "eps_high must be > 0")
            c.require(self.variant in GSPO_VARIANTS, f"variant must be one of {GSPO_VARIANTS}")
            _check_group(c, self.group_size, 2)
            c.require(self.adv_eps >= 0, "adv_eps must be >= 0")

    def loss(
        self,
        *,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        ref_logprobs: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        adv = _token_advantages(advantages.detach(), logprobs)
        seq_log_ratio = masked_mean(logprobs - old_logprobs.detach(), mask, dim=-1)  # log s_i, [B]
        if c.variant == "token":
            # value log s_i, gradient ∇log π_θ(y_t): sg[s_i] · π_θ / sg[π_θ]
            log_w = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)
        else:
            log_w = seq_log_ratio.unsqueeze(-1).expand_as(logprobs)
        per_token = clipped_surrogate(torch.exp(log_w), adv, c.eps_low, c.eps_high)
        loss = _aggregate(per_token, mask, "grpo", None)
        seq_valid = mask.bool().any(dim=-1)
        seq_adv = _sequence_advantages(advantages.detach(), mask)
        diag = {"loss": _f(loss)}
        diag.update(_ratio_diagnostics(seq_log_ratio.detach(), seq_adv, seq_valid, c.eps_low, c.eps_high))
        return loss, diag


# =========================================================================== GKD


class GKD(BaselineLoss):
    """GKD (Agarwal et al. 2024, arXiv 2306.13649, eq. 1 and Alg. 1): on-policy distillation.

    Per token, over the full vocabulary: :func:`gkd_token_loss` (TRL β semantics: β = 0 forward
    KL(teacher‖student), β = 1 reverse KL(student‖teacher), 0.5 = symmetric JSD). With
    probability ``lmbda`` the batch is sampled from the student (on-policy), otherwise taken from
    the fixed dataset — the sampler reads that knob. The loss is the token mean (TRL
    ``batchmean`` over completion tokens).
    """

    name = "gkd"
    inputs = ("token_losses",)

    @dataclass(frozen=True)
    class Config(_Config):
        beta: float = 0.5  #: JSD interpolation (GKD; TRL)
        lmbda: float = 0.5  #: fraction of on-policy (student-generated) batches (TRL)
        temperature: float = 1.0  #: softmax temperature inside the divergence (TRL's loss default)
        seq_kd: bool = False  #: sample from the teacher instead of the dataset (TRL)

        def _check(self, c: _Checks) -> None:
            c.require(0 <= self.beta <= 1, "beta must be in [0, 1]")
            c.require(0 <= self.lmbda <= 1, "lmbda must be in [0, 1]")
            c.require(self.temperature > 0, "temperature must be > 0")

    def token_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """``[c, V] → [c]`` generalised JSD with this config's β and temperature."""
        return gkd_token_loss(student_logits, teacher_logits, self.config.beta, self.config.temperature)

    def loss(self, *, token_losses: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Token mean of per-token divergences ``[B, T]`` (from :meth:`token_loss`)."""
        loss = masked_mean(token_losses, mask)
        worst = token_losses.detach().masked_fill(~mask.bool(), 0.0).max()
        return loss, {"loss": _f(loss), "token_loss_max": _f(worst)}


# =========================================================================== MiniLLM


class MiniLLM(BaselineLoss):
    """MiniLLM (Gu et al. 2023, arXiv 2306.08543, §2.2): reverse-KL policy gradient toward a teacher p.

    ``L = mean_t KL(q_θ(·|y_<t)‖p(·|y_<t))``  (single-step part, exact, :func:`minillm_token_loss`)
    ``  + mean_t −min(ρ_t Â_t, clip(ρ_t, 1 ± ε) Â_t)``,  ``ρ_t = (q_θ/q_old)(y_t) · w_t``
    with Â_t the length-normalised long-term reward-to-go (:meth:`advantages`) and ``w_t`` the
    teacher-mixed-sampling weight (:meth:`mix_weights`). As in the LMOps release, the clip is on
    the weighted ratio ``ρ_t`` and the single-step term is unweighted.
    """

    name = "minillm"
    inputs = ("logprobs", "old_logprobs", "advantages", "single_step_kl")

    @dataclass(frozen=True)
    class Config(_Config):
        teacher_mix_alpha: float = 0.2  #: α of p̃ = αp + (1−α)q_θ (MiniLLM §2.2)
        clip: float = 0.2  #: ε for the weighted ratio (MiniLLM §2.2 / LMOps)
        length_norm: bool = True  #: length normalisation of R_{t+1} (§2.2)
        single_step_reg: bool = True  #: add the single-step reverse-KL term
        whiten_advantages: bool = True  #: LMOps whitens the long-term rewards
        temperature: float = 1.0  #: softmax temperature of the single-step term

        def _check(self, c: _Checks) -> None:
            c.require(0 <= self.teacher_mix_alpha < 1, "teacher_mix_alpha must be in [0, 1)")
            c.require(0 < self.clip < 1, "clip must be in (0, 1)")
            c.require(self.temperature > 0, "temperature must be > 0")

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
        adv = _token_advantages(advantages.detach(), logprobs)
        log_ratio = logprobs - old_logprobs.detach()
        if mix_weights is not None:
            log_ratio = log_ratio + torch.log(mix_weights.detach())
        pg_loss = masked_mean(clipped_surrogate(torch.exp(log_ratio), adv, c.clip, c.clip), mask)
        loss, diag = pg_loss, {"pg_loss": _f(pg_loss)}
        if c.single_step_reg:
            if single_step_kl is None:
                raise ValueError("MiniLLM with single_step_reg needs single_step_kl [B, T] (minillm_token_loss)")
            reg = masked_mean(single_step_kl, mask)
            loss = loss + reg
            diag["single_step_kl"] = _f(reg)
        diag["loss"] = _f(loss)
        diag.update(_ratio_diagnostics(log_ratio.detach(), adv, mask, c.clip, c.clip))
        return loss, diag


ALGOS: dict[str, type[BaselineLoss]] = {
    "reinforce": Reinforce,
    "ppo": PPO,
    "grpo": GRPO,
    "dapo": DAPO,
    "gspo": GSPO,
    "gkd": GKD,
    "minillm": MiniLLM,
}
