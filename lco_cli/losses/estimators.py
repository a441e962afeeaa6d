"""Advantage estimators and reward shaping of the baselines (REINFORCE/RLOO, GRPO, PPO-GAE, DAPO)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lco_cli.losses.reductions import as_float_mask, grouped


def reinforce_baseline(rewards: Tensor, group_size: int = 1) -> Tensor:
    """REINFORCE advantage ``A_i = r_i − b_i`` (Williams 1992, baseline ``b``).

    * ``group_size == 1``: ``b = mean_batch(r)`` (one response per prompt).
    * ``group_size > 1`` : RLOO leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024)
      ``b_i = (Σ_{j∈g} r_j − r_i) / (G − 1)`` — unbiased because b_i does not depend on r_i.
    """
    rewards = rewards.detach()
    if group_size == 1:
        return rewards - rewards.mean()
    g = grouped(rewards, group_size)
    loo = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - loo).reshape(-1)


def group_normalize(rewards: Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """GRPO outcome advantage (Shao et al. 2024, §4.1.2): ``A_i = (r_i − mean_g) / (std_g + eps)``.

    ``std`` is the unbiased group std (``torch.std``, as TRL); ``eps=1e-4`` is TRL's. A group with
    equal rewards gets ``A = 0``. ``scale=False`` drops the division (Dr. GRPO, Liu et al. 2025).
    """
    if group_size < 2:
        raise ValueError("group_normalize needs group_size >= 2 (the std of one sample is undefined)")
    g = grouped(rewards.detach(), group_size)
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
    m = as_float_mask(mask, values)
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
    return shaped if mask is None else shaped * as_float_mask(mask, shaped)


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
    g = grouped(rewards.detach(), group_size)
    return g.amax(dim=1) > g.amin(dim=1)
