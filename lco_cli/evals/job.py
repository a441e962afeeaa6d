"""What a benchmark that is not scored pass@1 gets from `lco eval`: one policy, the eval settings,
its output folder; plus the one-response-per-prompt generation those benchmarks share.

Generations are written to `eval/samples/<policy>/<benchmark>.generations.jsonl` as soon as they
exist, so an eval interrupted later (a judge outage, a crash while scoring) resumes without
generating again; with `eval.checkpoint_every_minutes` an interrupted generation pass resumes from
its partial file (`lco_cli.evals.partial`).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lco_cli.errors import ConfigError, MissingArtifactError
from lco_cli.runtime.rundir import atomic_write_text


@dataclass
class PolicyHandle:
    """A policy under evaluation."""

    name: str
    engine: Any            # .generate(prompt_ids, n, temperature=, top_p=, max_new_tokens=) -> Rollouts
    tokenizer: Any
    model_ref: str | None  # a folder or hub id `from_pretrained` loads; None for composite policies (π*)


@dataclass
class EvalJob:
    policy: PolicyHandle
    settings: Any          # the preset's EvalConfig
    data_path: str | None  # eval.data.<benchmark>
    out_dir: Path          # eval/samples/<policy>/
    run_dir: Path          # the run directory (the judge cache lives there)
    seed: int
    resume: bool
    partial: Any = None    # the unit's `evals.partial.Partial` (eval.checkpoint_every_minutes); None: no checkpoints


@dataclass
class Prompted:
    """One prompt of a benchmark: `id` is stable across runs (resume and caches key on it)."""

    id: str
    prompt: str            # the instruction / question as the benchmark states it
    fields: dict           # everything else the scorer needs (reference output, question, ...)


@contextlib.contextmanager
def data_errors(benchmark: str):
    """Errors loading a benchmark's data, naming `eval.data.<benchmark>`: a file that does not exist
    is a missing prerequisite (exit 3); one that exists but is wrong (a missing field, an unsupported
    type) is an invalid data file (exit 2)."""
    try:
        yield
    except FileNotFoundError as exc:
        raise MissingArtifactError(f"eval.data.{benchmark}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"eval.data.{benchmark}: {exc}") from None


def chat_prompt(text: str, tokenizer: Any) -> str:
    """The model input for an instruction: the chat template when the tokenizer has one, else a
    plain completion prompt (base models)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Instruction: {text}\nResponse: "


def generations_path(job: EvalJob, benchmark: str) -> Path:
    return job.out_dir / f"{benchmark}.generations.jsonl"


def read_generations(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: r["generation"] for r in rows}


def generate_responses(job: EvalJob, benchmark: str, items: list[Prompted]) -> list[str]:
    """One response per item, with `eval.temperature` / `top_p` / `max_new_tokens`; reuses the
    generations file of an interrupted eval (resume) for the items it already holds, and the
    partial file of an interrupted generation pass for the rest."""
    from lco_cli.engines.generation import encode_prompts
    from lco_cli.evals.partial import Partial, generate_resumable, partial_path

    path = generations_path(job, benchmark)
    done = read_generations(path) if job.resume else {}
    todo = [it for it in items if it.id not in done]
    if todo:
        partial = job.partial or Partial(partial_path(job.out_dir, benchmark), "", None)
        prompts = [chat_prompt(it.prompt, job.policy.tokenizer) for it in todo]

        def finish(chunk: range, roll) -> list[str]:
            texts = [""] * len(chunk)
            for g, text in zip(roll.group, roll.texts):
                texts[g] = text
            return texts

        texts = generate_resumable(job.policy.engine, encode_prompts(job.policy.tokenizer, prompts), 1, job.settings,
                                   job.seed, partial, job.resume, finish)
        for it, text in zip(todo, texts):
            done[it.id] = text
        job.out_dir.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"id": it.id, "instruction": it.prompt, "generation": done[it.id]}) for it in items
                 if it.id in done]
        atomic_write_text(path, "\n".join(lines) + "\n")
        partial.remove()  # the generations file holds them all now
    return [done[it.id] for it in items]


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation / sqrt(n) (the results.json contract)."""
    n = len(values)
    if not n:
        return 0.0, 0.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, (var / n) ** 0.5


def write_samples(job: EvalJob, benchmark: str, rows: list[dict]) -> None:
    """Per-sample file `eval/samples/<policy>/<benchmark>.jsonl`: every response with its scores."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.out_dir / f"{benchmark}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
