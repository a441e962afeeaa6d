"""What every baseline loss shares: its validated `Config`, the constructor, and the diagnostics."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from lco_cli.losses.configs import LossConfig
from lco_cli.losses.reductions import masked_mean, masked_var


def scalar(x: Tensor | float) -> float:
    return float(x.detach().item()) if isinstance(x, Tensor) else float(x)


@torch.no_grad()
def ratio_diagnostics(
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
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 − Var[R − V] / Var[R]`` over masked tokens (NaN if the returns are constant)."""
    var_r = masked_var(returns, mask, unbiased=False)
    if var_r == 0:
        return float("nan")
    return scalar(1.0 - masked_var(returns - values, mask, unbiased=False) / var_r)


class BaselineLoss:
    """Common constructor: ``Algo()``, ``Algo(Algo.Config(...))`` or ``Algo(field=value, ...)``."""

    Config: ClassVar[type] = LossConfig

    def __init__(self, config: Optional[LossConfig] = None, **overrides: Any):
        if config is None:
            config = self.Config(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} expects {type(self).__name__}.Config, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
