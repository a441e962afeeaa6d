"""Checkpoints inside one (policy × benchmark) unit of `lco eval` (`eval.checkpoint_every_minutes`).

A long benchmark (MATH-500 at 2,048 tokens, an AlpacaEval generation pass) generates in chunks; the
per-problem results finished so far are written atomically to `eval/samples/<policy>/<benchmark>.partial.json`
at most every N minutes, with the sampling RNG state after the last chunk. A resumed eval restores
both and continues, so its results equal an uninterrupted run's.

Determinism: with the HF engine, a chunk is a run of whole problems whose samples fill whole engine
batches, so the chunked calls pad, batch and draw random numbers exactly as one call over all
problems does: turning checkpoints on changes no number, and a resume restores the RNG stream where
the partial file left it. (vLLM keeps its sampler state inside its engine, so a resumed vLLM eval
samples the remaining problems afresh: same distribution, not the same draws.)
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import torch

from lco_cli.runtime.console import warn
from lco_cli.runtime.rundir import atomic_write_json

# Test hook: LCO_EVAL_CHUNK_DELAY=S sleeps S seconds after every generated chunk, so a test can kill
# an eval while its partial file exists (the training stages' LCO_STEP_DELAY counterpart).
DELAY_ENV = "LCO_EVAL_CHUNK_DELAY"


def partial_path(out_dir: Path, benchmark: str) -> Path:
    return out_dir / f"{benchmark}.partial.json"


def unit_identity(**parts: Any) -> str:
    """What a unit's results depend on (stage config hash, policy, benchmark, problem ids): a partial
    file written under another identity is ignored."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def chunk_problems(batch_size: int, samples: int) -> int:
    """Problems per chunk: the fewest whole problems whose samples fill whole engine batches (the
    engine batches the expanded problem × sample list), so chunking leaves every batch unchanged."""
    return batch_size // math.gcd(batch_size, samples)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    """torch's CPU and CUDA generator states (HF sampling draws from them)."""
    state = {"cpu": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(_tensor(state["cpu"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


@dataclass
class Partial:
    """The partial file of one unit; `minutes` None means checkpoints are off (nothing is written)."""

    path: Path
    identity: str
    minutes: float | None
    last_save: float = field(default_factory=time.time)

    def load(self, resume: bool) -> tuple[list, dict | None]:
        """(results of the problems done, RNG state after them), or ([], None) when there is no
        usable partial file; a stale one (no resume, another identity) or a torn one is removed."""
        if not self.path.exists():
            return [], None
        why = None if resume else "the stage starts fresh"
        data: dict = {}
        if why is None:
            try:
                data = json.loads(self.path.read_text())
                results, rng = data["results"], data["rng"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                why = f"unreadable ({type(exc).__name__}; cut short by a kill?)"
                warn(f"{self.path}: {why}; dropped, the benchmark starts again")
        if why is None and data.get("identity") != self.identity:
            why = "written for another config"
        if why is not None:
            self.remove()
            return [], None
        click.echo(f"eval: {self.path.name}: {len(results)} problems done before the interruption; resuming after them",
                   err=True)
        return results, rng

    def save_if_due(self, results: list, rng: dict) -> None:
        if self.minutes is None or time.time() - self.last_save < 60 * self.minutes:
            return
        atomic_write_json(self.path, {"identity": self.identity, "results": results, "rng": rng})
        self.last_save = time.time()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def generate_resumable(engine, prompt_ids: list[list[int]], n: int, cfg, seed: int, partial: Partial, resume: bool,
                       finish: Callable[[range, Any], list]) -> list:
    """One result per prompt: `finish(chunk, rollouts)` turns the rollouts of the prompts in `chunk`
    (a range of indices; rollout group g is prompt chunk[g]) into one JSON-serialisable result per
    prompt, which the partial file keeps.

    With checkpoints off, one chunk holds every prompt (the engine call the eval always made)."""
    # the exact prompts too: a data file, tokenizer or template changed under the same config starts over
    partial.identity = unit_identity(unit=partial.identity, prompts=prompt_ids)
    results, rng = partial.load(resume)
    if rng is None:
        torch.manual_seed(seed)
    else:
        set_rng_state(rng)
    step = chunk_problems(cfg.batch_size, n) if partial.minutes is not None else max(len(prompt_ids), 1)
    delay = float(os.environ.get(DELAY_ENV) or 0)
    for start in range(len(results), len(prompt_ids), step):
        chunk = range(start, min(start + step, len(prompt_ids)))
        roll = engine.generate(prompt_ids[chunk.start:chunk.stop], n, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_new_tokens=cfg.max_new_tokens)
        rng = rng_state()
        results += finish(chunk, roll)
        set_rng_state(rng)  # scoring between chunks must not move the sampling stream
        partial.save_if_due(results, rng)
        if delay:
            time.sleep(delay)
    return results
