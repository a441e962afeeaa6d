"""SIGTERM (batch schedulers, `timeout`) and SIGHUP (a closed terminal) end a command the way
Ctrl-C does: the signal raises `Interrupted`, a KeyboardInterrupt, so the stage is marked failed
+ interrupted, temp files are removed, and the CLI prints one message and exits 128 + signal."""
from __future__ import annotations

import signal

from lco_cli.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum, frame):
    # Ignore further signals while the stage records its state (a second Ctrl-C must not cut that short).
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def install() -> None:
    """Route the handled signals to `Interrupted` (main thread only; a no-op elsewhere)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED:
        signal.signal(sig, _raise_interrupted)
