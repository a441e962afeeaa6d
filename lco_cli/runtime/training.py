"""Pieces every training stage shares: accelerator, optimizer + schedule, checkpoints, data order,
progress display, and the stage lifecycle (lock, status, config, failure handling).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

from lco_cli.config import Preset, config_hash, dump_yaml, to_dict
from lco_cli.errors import LcoError
from lco_cli.runtime.rundir import RunDir, StageDir, atomic_dir, atomic_write_json, atomic_write_text

INTERRUPT_ENV = "LCO_INTERRUPT_AT_STEP"  # test hook: raise KeyboardInterrupt after this step


# --------------------------------------------------------------------------- stage lifecycle


def stage_inputs(preset: Preset, stage: str) -> dict:
    """What a stage's output depends on: its own section plus model/task/seed."""
    d = to_dict(preset)
    return {stage: d[stage], "model": d["model"], "task": d["task"], "seed": d["seed"]}


def stage_config_hash(preset: Preset, stage: str) -> str:
    return config_hash(stage_inputs(preset, stage))


@contextlib.contextmanager
def stage_run(run: RunDir, preset_name: str, preset: Preset, stage: str, accelerator=None) -> Iterator[StageDir]:
    """Lock the stage, record config and status; mark failed (with the reason) on any error.

    Only the main process writes; the others wait until the folder is set up (or cleared)."""
    sd = run.stage(stage)
    barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
    if accelerator is not None and not accelerator.is_main_process:
        barrier()
        yield sd
        return
    with sd.lock():
        resolved = to_dict(preset)
        section_hash = stage_config_hash(preset, stage)
        previous = sd.status() or {}
        # Resume only an unfinished stage that ran with the same config; anything else starts clean.
        sd.resume = previous.get("state") in ("running", "failed") and previous.get("config_hash") == section_hash
        if not sd.resume:
            clear_stage(sd)
        run.write_header(preset_name, resolved, config_hash(resolved))
        atomic_write_text(sd.path / "config.yaml", dump_yaml(resolved[stage]))
        sd.set_status("running", config_hash=section_hash, step=previous.get("step", 0) if sd.resume else 0,
                      inputs=stage_inputs(preset, stage))
        barrier()
        try:
            yield sd
        except KeyboardInterrupt:
            sd.set_status("failed", error="interrupted", interrupted=True)
            raise
        except LcoError as exc:
            sd.set_status("failed", error=exc.message)
            raise
        except Exception as exc:
            sd.set_status("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        sd.set_status("done", config_hash=section_hash, step=getattr(sd, "final_step", None))


def clear_stage(sd: StageDir) -> None:
    """Remove a stage's previous outputs (not its lock) before a fresh start."""
    import shutil

    for child in sd.path.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# --------------------------------------------------------------------------- accelerator & optim


def make_accelerator(mixed_precision: str, seed: int):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(seed)
    return acc


def make_optimizer(model, lr: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused/foreach AdamW is the fast path on GPU; on CPU the default is fine.
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))


def make_scheduler(optimizer, total_steps: int, warmup_steps: int, kind: str = "cosine"):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


def optimizer_step(acc, opt, sched, trainable, max_grad_norm: float) -> float:
    """Clip (when max_grad_norm > 0), step optimizer and schedule, zero grads; returns the pre-clip norm."""
    norm = grad_norm_of(trainable)
    if max_grad_norm > 0:
        acc.clip_grad_norm_(trainable, max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return norm


def grad_norm_of(params) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


# --------------------------------------------------------------------------- data order


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


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(sd: StageDir, accelerator, step: int, keep: int, extra: dict | None = None) -> None:
    """Model, optimizer, scheduler and RNG states (accelerate) plus step/data position, atomically."""
    accelerator.wait_for_everyone()
    final = sd.checkpoint_path(step)
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            accelerator.save_state(str(tmp), safe_serialization=True)
            atomic_write_json(tmp / "trainer_state.json", {"step": step, **(extra or {})})
        sd.prune_checkpoints(keep)
        st = sd.status() or {}
        st.update({"step": step, "checkpoint": str(final)})
        atomic_write_json(sd.path / "status.json", st)
    accelerator.wait_for_everyone()


def load_checkpoint(sd: StageDir, accelerator) -> dict | None:
    """Restore the newest checkpoint if any; returns its trainer_state (step, ...)."""
    ck = sd.latest_checkpoint()
    if ck is None:
        return None
    accelerator.load_state(str(ck))
    state = json.loads((ck / "trainer_state.json").read_text())
    return state


def maybe_interrupt(step: int) -> None:
    target = os.environ.get(INTERRUPT_ENV)
    if target and int(target) == step:
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- progress


class Progress:
    """rich progress bar on a terminal; plain log lines when stdout is not a TTY (CI)."""

    def __init__(self, stage: str, total: int, start: int = 0, enabled: bool = True, every: int = 10):
        self.stage, self.total, self.every = stage, total, every
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.time()
        self.start = start
        self._bar = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            from rich.console import Console

            # stderr, so that `--json` output on stdout stays machine-readable
            self._bar = RichProgress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(stage, total=total, completed=start, info="")

    def update(self, step: int, info: dict[str, float]) -> None:
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=text)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            elapsed = time.time() - self.t0
            done = max(step - self.start, 1)
            eta = elapsed / done * (self.total - step)
            print(f"[{self.stage}] step {step}/{self.total} {text} eta={eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def total_steps(n_items: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    steps = max(1, math.ceil(n_items * epochs / batch_size))
    return min(steps, max_steps) if max_steps else steps


def write_json(path: Path, obj) -> None:
    atomic_write_json(path, obj)
