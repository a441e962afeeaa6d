"""Progress of a stage: a rich bar on a terminal, plain log lines when stderr is not a TTY (CI).

The ETA is our own (time per step since this process started × steps left), so it shows as soon
as one step is done even when steps take minutes — rich's own estimate needs several updates
inside a 30 s window and stays at -:--:-- for slow steps."""
from __future__ import annotations

import sys
import time


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """rich progress bar on a terminal; plain log lines when stderr is not a TTY (CI)."""

    def __init__(self, stage: str, total: int, start: int = 0, enabled: bool = True, every: int = 10, console=None):
        self.stage, self.total, self.every = stage, total, every
        self.enabled = enabled
        self.tty = enabled and (console is not None or sys.stderr.isatty())
        self.t0 = time.time()
        self.start = start
        self._bar = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            # stderr, so that `--json` output on stdout stays machine-readable
            self._bar = RichProgress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("eta {task.fields[eta]}"), TextColumn("{task.fields[info]}"),
                                     console=console or Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(stage, total=total, completed=start, info="", eta=format_eta(None))

    def eta(self, step: int) -> float | None:
        done = step - self.start
        if done <= 0:
            return None
        return (time.time() - self.t0) / done * (self.total - step)

    def update(self, step: int, info: dict[str, float]) -> None:
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=text, eta=format_eta(self.eta(step)))
            self._bar.refresh()
        elif self.enabled and (step % self.every == 0 or step == self.total):
            print(f"[{self.stage}] step {step}/{self.total} {text} eta={format_eta(self.eta(step))}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
