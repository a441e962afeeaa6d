"""Accelerator, optimizer + schedule, the optimizer step with its guards, data order, and the
divergence watch (grad norm stuck at exactly 0, entropy collapse)."""
from __future__ import annotations

import math
import random

import torch

from lco_cli.errors import StageFailedError
from lco_cli.runtime.console import warn


def make_accelerator(mixed_precision: str, seed: int):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(seed)
    return acc


def make_optimizer(model, lr: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))


def make_scheduler(optimizer, total_steps: int, warmup_steps: int, kind: str = "cosine"):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


def optimizer_step(acc, opt, sched, trainable, max_grad_norm: float) -> float:
    """Clip (when max_grad_norm > 0), step optimizer and schedule, zero grads; returns the pre-clip
    norm. Stops the stage cleanly when the step made a parameter non-finite."""
    norm = grad_norm_of(trainable)
    if max_grad_norm > 0:
        acc.clip_grad_norm_(trainable, max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    check_finite_parameters(trainable)
    return norm


def check_finite_parameters(params, step: int | None = None) -> None:
    """Raise StageFailedError when a parameter holds inf/NaN after an optimizer step.

    The loss/gradient guard cannot see this case (finite gradients times an infinite learning rate);
    nothing is saved afterwards, so the last checkpoint stays the last good state."""
    flags = [p.detach().isfinite().all() for p in params]
    if flags and not bool(torch.stack(flags).all()):
        at = f" at step {step}" if step is not None else ""
        raise StageFailedError(f"parameters became non-finite (inf/NaN){at} after an optimizer step — a learning rate "
                               "too high, or float16 weights overflowing (use bfloat16/float32); nothing was saved "
                               "after it, the last checkpoint is intact")


def grad_norm_of(params) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class DivergenceWatch:
    """Warns (stderr and the metrics row's `warning`) when the gradient norm is exactly 0, or the
    policy entropy is below `entropy_floor`, for `window` consecutive logged steps: training has
    collapsed although every number is finite (e.g. train.lr=1e3)."""

    def __init__(self, stage: str, window: int, entropy_floor: float):
        self.stage, self.window, self.entropy_floor = stage, window, entropy_floor
        self.streaks = {"grad_norm": 0, "entropy": 0}

    def observe(self, row: dict) -> dict:
        """Fields to add to `row` (empty when nothing is wrong)."""
        stuck = {"grad_norm": row.get("grad_norm") == 0.0,
                 "entropy": isinstance(row.get("entropy"), float) and row["entropy"] < self.entropy_floor}
        messages = []
        for key, bad in stuck.items():
            self.streaks[key] = self.streaks[key] + 1 if bad else 0
            if self.streaks[key] == self.window:  # once per streak
                what = "grad_norm is exactly 0" if key == "grad_norm" else f"entropy below {self.entropy_floor:g}"
                messages.append(f"{what} for {self.window} consecutive logged steps (collapsed? lower the lr)")
        if not messages:
            return {}
        text = "; ".join(messages)
        warn(f"{self.stage} step {row.get('step')}: {text}")
        return {"warning": text}


def batch_indices(step: int, batch_size: int, n_items: int, seed: int) -> list[int]:
    """Indices of the global batch for `step`: epoch-wise seeded permutations, so a resumed run
    (which only knows the step) draws exactly the same data as an uninterrupted one."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n_items)
        perm = list(range(n_items))
        random.Random(seed * 1_000_003 + epoch).shuffle(perm)
        take = min(batch_size - len(out), n_items - offset)
        out.extend(perm[offset : offset + take])
        pos += take
    return out


def shard(items: list, rank: int, world: int) -> list:
    """This process's share of a global batch (strided, so shards differ by at most one item)."""
    return items[rank::world]


def total_steps(n_items: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    steps = max(1, math.ceil(n_items * epochs / batch_size))
    return min(steps, max_steps) if max_steps else steps
