"""The run directory contract (docs/architecture.md): run.json, config.yaml and one folder per stage.

Every file is written atomically (temp name in the same folder, then `os.replace`), `final/`
appears only when complete, and a stage folder is locked while a process writes it. A rerun of a
finished stage writes into `.<stage>.staging/` beside it, swapped in by one `renameat2` exchange
only when it succeeds (`exchange_dirs`). State files that cannot be read end the command with one
message naming the file and the fix (`CorruptStateError`), and a torn last metrics line (a process
killed mid-append) is dropped with a warning.
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

from lco_cli.errors import CorruptStateError, MissingArtifactError, StageLockedError
from lco_cli.runtime.console import warn

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


def read_state_json(path: Path, fix: str) -> dict | None:
    """A state file (status.json, run.json) or None when absent; unreadable -> CorruptStateError
    naming the file and `fix`, never a traceback."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStateError(f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'empty'}); "
                                f"{fix}") from None
    if not isinstance(data, dict):
        raise CorruptStateError(f"{path} does not hold a JSON object; {fix}")
    return data


def exchange_dirs(a: Path, b: Path) -> None:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE): a reader sees either
    the old or the new one, never neither. Where renameat2 is missing: three renames through
    `<b>.swap` (a crash between them can leave `b` parked under that name)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
            return
    parked = b.with_name(b.name + ".swap")
    os.replace(b, parked)
    os.replace(a, b)
    os.replace(parked, a)


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
            exchange_dirs(tmp, final)  # `final` is never missing; tmp now holds the old one
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class MetricsLog:
    """Append-only metrics.jsonl; one JSON object per logged step. `enrich` callbacks add fields to
    a row before it is written; `on_append` callbacks (the experiment trackers) see every row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.enrich: list = []  # row -> extra fields written with it (the divergence watch)
        self.on_append: list = []

    def append(self, row: dict) -> None:
        for extra in self.enrich:
            row = {**row, **extra(row)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        for callback in self.on_append:
            callback(row)

    def rows(self) -> list[dict]:
        """Every row; a line that does not parse (a write cut by a kill) is skipped with a warning."""
        if not self.path.exists():
            return []
        out = []
        lines = self.path.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                where = "last line" if i == len(lines) else f"line {i}"
                warn(f"{self.path}: {where} is not valid JSON (cut short by a kill?); dropped")
        return out

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after the checkpoint at `step` (a resume redoes that work). Step 0 means
        no checkpoint: every row goes, the step-0 row too (the run logs it again)."""
        kept = [r for r in self.rows() if 0 < step and r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class StageDir:
    """One stage folder: status.json, config.yaml, metrics.jsonl, checkpoints/, final/."""

    def __init__(self, run: "RunDir", name: str, path: Path | None = None):
        self.run = run
        self.name = name
        self.path = Path(path) if path is not None else run.path / name
        self.staged = path is not None  # a staging area beside the stage folder
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self.resume = False

    def staging(self) -> "StageDir":
        """Where a rerun of this (finished) stage writes until it succeeds."""
        return StageDir(self.run, self.name, self.run.path / f".{self.name}.staging")

    # -- status -------------------------------------------------------------------
    def status(self) -> dict | None:
        return read_state_json(self.path / STATUS_FILE,
                               f"delete it to start stage '{self.name}' over (`rm {self.path / STATUS_FILE}`), "
                               "or restore it from a backup")

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
        if not self.staged:
            self.run.record_stage(self.name, state, st.get("config_hash"))

    def update_status(self, **fields: Any) -> None:
        """Change fields of status.json without a state transition."""
        st = self.status() or {}
        st.update(fields)
        atomic_write_json(self.path / STATUS_FILE, st)

    # -- leftovers ------------------------------------------------------------------
    def remove_stale_temp(self) -> list[Path]:
        """Temp files and folders a killed writer left (`.name.XXXX.tmp`, `.final.old`); call under the lock."""
        removed = []
        samples = self.path / "samples"  # eval: samples/<policy>/<benchmark>.jsonl
        folders = [self.path, self.checkpoints_dir, samples, *(samples.rglob("*") if samples.is_dir() else [])]
        for folder in folders:
            if not folder.is_dir() or not folder.exists():
                continue
            for child in folder.iterdir():
                if child.name.startswith(".") and (child.name.endswith((".tmp", ".old", ".swap"))):
                    shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)
                    removed.append(child)
        return removed

    # -- lock ---------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive, non-blocking lock on the stage folder (released on exit or process death)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "a")
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
        """Complete checkpoint folders, oldest first (a `step-N` folder appears in one rename)."""
        if not self.checkpoints_dir.exists():
            return []
        found = [p for p in self.checkpoints_dir.iterdir()
                 if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
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
        # `force`: stages to rerun from scratch even though done with another config (--force).
        # `allow_rerun`: stages `lco run` reruns because an upstream reran (config changes allowed,
        # an identical interrupted rerun still resumes). A stage command refuses both otherwise.
        self.force: set[str] = set()
        self.allow_rerun: set[str] = set()
        self.plans: dict = {}  # stage -> the StagePlan it ran with (for `lco run`'s summary)

    def stage(self, name: str) -> StageDir:
        return StageDir(self, name)

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    def read(self) -> dict:
        return read_state_json(self.run_json, f"delete it (`rm {self.run_json}`); lco writes it again from the stage "
                                              "folders on the next command") or {}

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
