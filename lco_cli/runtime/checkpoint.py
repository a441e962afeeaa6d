"""Resumable checkpoints: written atomically with a manifest last, verified on resume (a damaged
newest checkpoint falls back to the previous good one), and due every N steps and/or minutes."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from lco_cli.errors import StageFailedError
from lco_cli.runtime.console import warn
from lco_cli.runtime.rundir import StageDir, atomic_dir, atomic_write_json

# Test hooks. LCO_INTERRUPT_AT_STEP=N raises KeyboardInterrupt after step N; N:TERM / N:HUP / N:INT
# sends the process that signal instead (the real handler path). LCO_STEP_DELAY=S sleeps S seconds
# after every step, so a test or bench/chaos.py can kill a run at a chosen point.
INTERRUPT_ENV = "LCO_INTERRUPT_AT_STEP"
DELAY_ENV = "LCO_STEP_DELAY"
MANIFEST = "manifest.json"
# Files up to this size are hashed into the manifest; larger ones (multi-GB weights and optimizer
# states) are checked by size, which catches the truncation a kill or a full disk leaves, without
# reading gigabytes at every save and resume.
HASH_LIMIT = 256 * 2**20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(folder: Path) -> dict:
    files = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST):
        size = path.stat().st_size
        entry = {"size": size}
        if size <= HASH_LIMIT:
            entry["sha256"] = _sha256(path)
        files[str(path.relative_to(folder))] = entry
    return {"files": files}


def manifest_problem(folder: Path) -> str | None:
    """Why `folder` is not a usable checkpoint, or None when its manifest checks out."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "no manifest.json (written last, so the save never finished)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"manifest.json unreadable ({type(exc).__name__})"
    for name, entry in manifest.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['size']}"
        if "sha256" in entry and _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def save_checkpoint(sd: StageDir, accelerator, step: int, keep: int, extra: dict | None = None) -> None:
    """Model, optimizer, scheduler and RNG states (accelerate) plus step/data position, atomically;
    the manifest is the last file written, so a checkpoint without one is incomplete."""
    accelerator.wait_for_everyone()
    final = sd.checkpoint_path(step)
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            accelerator.save_state(str(tmp), safe_serialization=True)
            atomic_write_json(tmp / "trainer_state.json", {"step": step, **(extra or {})})
            atomic_write_json(tmp / MANIFEST, build_manifest(tmp))
        sd.prune_checkpoints(keep)
        sd.update_status(step=step, checkpoint=str(final))
    sd.last_checkpoint_time = time.time()
    accelerator.wait_for_everyone()


def load_checkpoint(sd: StageDir, accelerator) -> dict | None:
    """Restore the newest checkpoint that verifies; returns its trainer_state (step, ...).

    A damaged one is skipped with a warning (and the previous one tried); with none usable the
    stage starts from step 0. Every process runs the same checks on the same files, so all agree."""
    sd.last_checkpoint_time = time.time()
    half_loaded = None  # a load that failed midway may have overwritten part of the model
    for ck in reversed(sd.checkpoints()):
        problem = manifest_problem(ck)
        if problem is None:
            try:
                accelerator.load_state(str(ck))
                return json.loads((ck / "trainer_state.json").read_text())
            except Exception as exc:  # noqa: BLE001 - any unreadable piece makes this checkpoint unusable
                problem = f"loading failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                half_loaded = ck
        if accelerator.is_main_process:
            warn(f"{sd.name}: checkpoint {ck} is damaged ({problem}); trying the previous one")
    if half_loaded is not None:  # starting from step 0 now would start from a mix of weights
        raise StageFailedError(f"{sd.name}: checkpoint {half_loaded} failed to load and no older one is usable; "
                               f"remove {sd.checkpoints_dir} to start the stage over")
    if sd.checkpoints() and accelerator.is_main_process:
        warn(f"{sd.name}: no usable checkpoint; the stage starts again from step 0")
    return None


def latest_good_checkpoint(sd: StageDir) -> Path | None:
    for ck in reversed(sd.checkpoints()):
        if manifest_problem(ck) is None:
            return ck
    return None


def checkpoint_due(sd: StageDir, accelerator, step: int, cfg) -> bool:
    """A checkpoint is due every `cfg.checkpoint_every` steps and, when set, every
    `cfg.checkpoint_every_minutes` since the last one (decided by the main process for all)."""
    if step % cfg.checkpoint_every == 0:
        return True
    minutes = getattr(cfg, "checkpoint_every_minutes", None)
    if not minutes:
        return False
    due = time.time() - getattr(sd, "last_checkpoint_time", time.time()) >= 60 * minutes
    if accelerator is not None and accelerator.num_processes > 1:  # clocks differ: one decision for all ranks
        import torch

        flag = torch.tensor(float(due and accelerator.is_main_process), device=accelerator.device)
        due = bool(accelerator.reduce(flag, "sum") > 0)
    return due


def maybe_interrupt(step: int) -> None:
    """The test hooks above; called by every stage loop after each step."""
    delay = os.environ.get(DELAY_ENV)
    if delay:
        time.sleep(float(delay))
    target = os.environ.get(INTERRUPT_ENV)
    if not target:
        return
    at, _, sig = target.partition(":")
    if int(at) != step:
        return
    if not sig:
        raise KeyboardInterrupt
    import signal

    os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
    time.sleep(5)  # the handler raises within the sleep
