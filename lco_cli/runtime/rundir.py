"""The run directory contract (DESIGN §1): run.json, config.yaml and one folder per stage.

Every file is written atomically (temp name in the same folder, then `os.replace`), `final/`
appears only when complete, and a stage folder is locked while a process writes it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lco_cli.errors import MissingArtifactError, StageLockedError

STATUS_FILE = "status.json"
STAGES_WITH_FINAL = ("sft", "rm", "train")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; outputs should read like normal files
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class MetricsLog:
    """Append-only metrics.jsonl; one JSON object per logged step."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (they belong to work a resume will redo)."""
        kept = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class StageDir:
    """One stage folder: status.json, config.yaml, metrics.jsonl, checkpoints/, final/."""

    def __init__(self, run: "RunDir", name: str):
        self.run = run
        self.name = name
        self.path = run.path / name
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self._lock_fh = None

    # -- status -------------------------------------------------------------------
    def status(self) -> dict | None:
        f = self.path / STATUS_FILE
        return read_json(f) if f.exists() else None

    def is_done(self) -> bool:
        st = self.status()
        if not st or st.get("state") != "done":
            return False
        return self.name not in STAGES_WITH_FINAL or self.final.exists()

    def set_status(self, state: str, **extra: Any) -> None:
        st = self.status() or {}
        st.update({"state": state, **extra})
        if state == "running":
            st["started"] = now()
            st.pop("finished", None)
            st.pop("error", None)
        else:
            st["finished"] = now()
        atomic_write_json(self.path / STATUS_FILE, st)
        self.run.record_stage(self.name, state, st.get("config_hash"))

    # -- lock ---------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive, non-blocking lock on the stage folder (released on exit or process death)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StageLockedError(f"stage '{self.name}' is being written by another process (lock: {self.path / '.lock'})") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    # -- checkpoints ----------------------------------------------------------------
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step:06d}"

    def checkpoints(self) -> list[Path]:
        if not self.checkpoints_dir.exists():
            return []
        found = [p for p in self.checkpoints_dir.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "trainer_state.json").exists()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        cks = self.checkpoints()
        return cks[-1] if cks else None

    def prune_checkpoints(self, keep: int) -> None:
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    @property
    def final(self) -> Path:
        return self.path / "final"


class RunDir:
    """runs/<name>/: run.json (preset, hash, versions, per-stage state) and config.yaml."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def stage(self, name: str) -> StageDir:
        return StageDir(self, name)

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    def read(self) -> dict:
        return read_json(self.run_json) if self.run_json.exists() else {}

    def write_header(self, preset_name: str, resolved: dict, config_hash: str) -> None:
        from lco_cli.config import dump_yaml

        info = self.read()
        info.update({"preset": preset_name, "name": resolved.get("name"), "config_hash": config_hash, "versions": package_versions()})
        info.setdefault("stages", {})
        info.setdefault("created", now())
        atomic_write_json(self.run_json, info)
        atomic_write_text(self.path / "config.yaml", dump_yaml(resolved))

    def record_stage(self, name: str, state: str, section_hash: str | None) -> None:
        info = self.read()
        info.setdefault("stages", {})[name] = {"state": state, "config_hash": section_hash, "updated": now()}
        atomic_write_json(self.run_json, info)

    def require(self, path: Path, what: str) -> Path:
        if not Path(path).exists():
            raise MissingArtifactError(f"{what} not found: {path}")
        return Path(path)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("lco", "torch", "transformers", "accelerate", "datasets", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
