"""Masked reductions over response tokens ``[B, T]`` with a mask (1 = real token), shared by the losses."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def as_float_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(dtype=like.dtype if like.is_floating_point() else torch.float32)


def masked_sum(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """``Σ x·mask`` over all entries, or over ``dim``."""
    m = as_float_mask(mask, x)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """``Σ x·mask / Σ mask``; the count is clamped to ≥ 1 so an empty mask gives 0, not NaN."""
    m = as_float_mask(mask, x)
    count = m.sum() if dim is None else m.sum(dim=dim)
    return masked_sum(x, m, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over the masked entries; Bessel-corrected like TRL's ``masked_var``."""
    m = as_float_mask(mask, x)
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
    m = as_float_mask(mask, x)
    mean, var = masked_mean(x, m), masked_var(x, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """Broadcast ``[B]`` sequence advantages to ``[B, T]``; pass ``[B, T]`` through."""
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages.unsqueeze(-1).expand_as(like)
    if advantages.shape == like.shape:
        return advantages
    raise ValueError(f"advantages must be [B] or [B, T]={tuple(like.shape)}, got {tuple(advantages.shape)}")


def sequence_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` advantages; a ``[B, T]`` input is reduced by its masked token mean."""
    return advantages if advantages.dim() == 1 else masked_mean(advantages, mask, dim=-1)


def grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B], got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"batch of {rewards.numel()} is not a whole number of groups of {group_size}")
    return rewards.reshape(-1, group_size)
