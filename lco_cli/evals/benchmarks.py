"""Benchmark registry: problems, prompts and answer checking for evaluation.

Built in: `math500`, `amc23` and `minerva`, each loaded from its hub dataset by default or from a
local JSONL / JSON / parquet file (or directory of them) with the same fields.

Also built in, each in its own module registered on first use of the registry (docs/evaluations.md):
`alpacaeval` (AlpacaEval 2.0 WR / LC-WR through a judge endpoint), `reward` (sequence-classification
reward models, `eval.reward_models`), `qa_feedback` (Wu et al.'s fine-grained rewards), `mmlu` and
`mmlu_redux` (lm-evaluation-harness).

Extension point: any module can add a benchmark with `register(MyBenchmark())`, where
`MyBenchmark` subclasses `Benchmark` (sets `name`, implements `load`, and overrides `prompt` /
`check` if the defaults -- chain-of-thought prompt, math-verify checking -- do not fit). A benchmark
that is not scored pass@1 implements `evaluate(job) -> list[result rows]` instead (see
`lco_cli.evals.job`). This module imports no task code; the module that defines a benchmark
registers it when imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lco_cli.evals.verify import Result, verify_batch

#: The Qwen2.5-Math chain-of-thought instruction.
COT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: Row fields used as the problem id when present (else the row's index in the file).
ID_FIELDS = ("unique_id", "id")

#: Local file suffix -> `datasets` builder.
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class Problem:
    id: str
    question: str
    answer: str


def cot_prompt(question: str, tokenizer: Any = None) -> str:
    """The model input for `question`: the tokenizer's chat template when it has one, else a
    plain `Question: ... Answer: ` completion prompt (base models)."""
    content = f"{question}\n{COT_INSTRUCTION}"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {question}\n{COT_INSTRUCTION}\nAnswer: "


class Benchmark:
    """Base class of benchmarks. Subclasses set `name` and implement `load`."""

    name: str  # declared without a default, so that dataclass subclasses can take it as a field

    def load(self, path: str | None = None, limit: int | None = None) -> list[Problem]:
        """The first `limit` problems, from `path` (a local file) or the default source."""
        raise NotImplementedError

    def config_errors(self, eval_cfg: Any) -> list[str]:
        """Problems with the `eval` section for this benchmark (models, optional extras), for
        `lco validate` and the preset loader; none by default."""
        return []

    def prompt(self, problem: Problem, tokenizer: Any) -> str:
        """The text fed to the model for `problem`."""
        return cot_prompt(problem.question, tokenizer)

    def check(
        self,
        problems: Sequence[Problem],
        generations: Sequence[str],
        timeout: float = 5.0,
        workers: int | None = None,
    ) -> list[Result]:
        """(extracted answer, correct?) for each generation of the matching problem.

        Several generations per problem: repeat the problem in `problems`.
        """
        if len(problems) != len(generations):
            raise ValueError(f"{len(problems)} problems but {len(generations)} generations")
        golds = [problem.answer for problem in problems]
        return verify_batch(golds, list(generations), timeout=timeout, workers=workers)


@dataclass
class HubBenchmark(Benchmark):
    """A benchmark stored as a hub dataset with one question and one answer field per row."""

    name: str
    hub_id: str
    split: str
    question_field: str
    answer_field: str = "answer"

    def load(self, path: str | None = None, limit: int | None = None) -> list[Problem]:
        source = str(path) if path is not None else f"{self.hub_id} (split {self.split})"
        rows = load_rows(path) if path is not None else _load_hub(self.hub_id, self.split)
        for field in (self.question_field, self.answer_field):
            if field not in rows.column_names:
                raise ValueError(
                    f"{source}: missing field {field!r} for benchmark {self.name!r} "
                    f"(fields: {', '.join(rows.column_names)})"
                )
        if limit is not None:
            rows = rows.select(range(min(limit, len(rows))))
        return [self._problem(index, row, source) for index, row in enumerate(rows)]

    def _problem(self, index: int, row: dict, source: str) -> Problem:
        question, answer = row[self.question_field], row[self.answer_field]
        for field, value in ((self.question_field, question), (self.answer_field, answer)):
            if value is None:
                raise ValueError(f"{source}: row {index} has no value for field {field!r}")
        return Problem(id=_row_id(index, row), question=str(question), answer=answer_text(answer))


def answer_text(value: Any) -> str:
    """A reference answer as text; integral floats (`27.0`, as parquet/JSON may store them)
    become `27`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _row_id(index: int, row: dict) -> str:
    """The row's own id (`unique_id`, `id`) when it has one, else its index in the source."""
    for field in ID_FIELDS:
        if row.get(field) is not None:
            return str(row[field])
    return str(index)


def _load_hub(hub_id: str, split: str):
    import datasets  # heavy; only needed when loading

    return datasets.load_dataset(hub_id, split=split)


def _local_data_files(path: str | Path) -> tuple[str, list[str]]:
    """(`datasets` builder, files) for a local file, or for the data files under a directory
    (recursively, hidden paths skipped)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"benchmark data file not found: {path}")
    if root.is_dir():
        files = sorted(
            f
            for f in root.rglob("*")
            if f.is_file()
            and f.suffix.lower() in LOCAL_FORMATS
            and not any(part.startswith(".") for part in f.relative_to(root).parts)
        )
        if not files:
            raise FileNotFoundError(f"no .jsonl, .json or .parquet files under {path}")
    else:
        files = [root]
    builders = {LOCAL_FORMATS.get(f.suffix.lower()) for f in files}
    if None in builders:
        raise ValueError(f"{path}: unsupported benchmark file type (use .jsonl, .json or .parquet)")
    if len(builders) > 1:
        raise ValueError(f"{path}: mixes JSON and parquet files; keep one format per directory")
    return builders.pop(), [str(f) for f in files]


def load_rows(path: str | Path):
    """A local JSONL / JSON / parquet file (or a directory of them) as a `datasets.Dataset`."""
    import datasets  # heavy; only needed when loading

    builder, files = _local_data_files(path)
    return datasets.load_dataset(builder, data_files=files, split="train")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Benchmark] = {}

#: Modules whose import registers the benchmarks beyond math (imported on first registry use, so
#: that `import lco_cli.evals.benchmarks` stays light and import cycles cannot form).
BUILTIN_MODULES = ("lco_cli.evals.alpacaeval", "lco_cli.evals.reward_models", "lco_cli.evals.qa_feedback",
                   "lco_cli.evals.mmlu")


def load_builtin_benchmarks() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def benchmark_names() -> tuple[str, ...]:
    """Every registered benchmark name, the built-in ones included."""
    load_builtin_benchmarks()
    return tuple(BENCHMARKS)


def register(bench: Benchmark, *, overwrite: bool = False) -> Benchmark:
    """Add `bench` under `bench.name` and return it.

    Registering an equal benchmark again is a no-op (a module imported twice); a different one
    under a taken name is a ValueError unless `overwrite=True`.
    """
    if not getattr(bench, "name", None):
        raise ValueError(f"{bench!r} has no name")
    existing = BENCHMARKS.get(bench.name)
    if existing is not None and existing != bench and not overwrite:
        raise ValueError(
            f"benchmark {bench.name!r} is already registered ({existing!r}); "
            "pass overwrite=True to replace it"
        )
    BENCHMARKS[bench.name] = bench
    return bench


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`; KeyError listing the known names otherwise."""
    load_builtin_benchmarks()
    try:
        return BENCHMARKS[name]
    except KeyError:
        known = ", ".join(sorted(BENCHMARKS)) or "none"
        raise KeyError(f"unknown benchmark {name!r} (known: {known})") from None


register(HubBenchmark("math500", "HuggingFaceH4/MATH-500", "test", question_field="problem"))
register(HubBenchmark("amc23", "math-ai/amc23", "test", question_field="question"))
register(HubBenchmark("minerva", "math-ai/minervamath", "test", question_field="question"))
