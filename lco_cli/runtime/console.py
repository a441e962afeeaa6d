"""What the user sees on stderr: warnings, and which process may speak.

Under `accelerate launch` / torchrun every rank runs the same command; only rank 0 prints, so a run
shows one "done" line and one copy of every warning (RANK is set by the launcher).
"""
from __future__ import annotations

import os
import sys


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def warn(message: str) -> None:
    """One 'warning: ...' line on stderr (rank 0 only)."""
    if is_main_rank():
        print(f"warning: {message}", file=sys.stderr, flush=True)
