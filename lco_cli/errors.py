"""User-facing errors and the exit codes of the CLI contract (README, "Exit codes").

Raising one of these anywhere ends the command with its exit code and one clear message;
the CLI layer turns them into text, never a traceback.
"""
from __future__ import annotations


class LcoError(Exception):
    """Base of the errors a user can fix; `exit_code` is the process exit status."""

    exit_code = 1

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []


class ConfigError(LcoError):
    """Invalid preset, override or usage (exit 2). `details` lists every problem found."""

    exit_code = 2


class MissingArtifactError(LcoError):
    """A prerequisite stage output or file is missing (exit 3); the message names the path."""

    exit_code = 3


class StageLockedError(LcoError):
    """Another process is writing the same stage (exit 1)."""

    exit_code = 1


class StageFailedError(LcoError):
    """A stage stopped cleanly on a training failure (NaN guard, ...) (exit 1)."""

    exit_code = 1


class CorruptStateError(LcoError):
    """A state file of a run directory cannot be read (exit 1); the message names it and the fix."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP while a command runs (a KeyboardInterrupt, so every cleanup path
    that handles Ctrl-C handles the others). Exit code 128 + signal number: 130 (SIGINT), 143
    (SIGTERM), 129 (SIGHUP), as shells report a process killed by that signal."""

    def __init__(self, signum: int = 2, note: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.note = note

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:  # pragma: no cover
            return f"signal {self.signum}"
