"""The `math` task: MATH-schema rows (`problem`, `solution` with a final `\\boxed{}`).

Prompt: the question + the chain-of-thought instruction the benchmarks use
(`lco_cli.evals.benchmarks.cot_prompt`), through the tokenizer's chat template when it has one,
else as plain text (logged once). Verifier: math-verify through the sandboxed pool of
`lco_cli.evals.verify` (the paper's rule-based reward is +1 / -1 from its verdict, Table 5).
Reference answer: the last `\\boxed{}` of `solution`, or `task.answer_field`. Rows without an
extractable answer are skipped and counted; a source where no row has one is an error.

Default source: `DigitalLearningGmbH/MATH-lighteval` (split `train`, 7,500 problems): the
original MATH training set (Hendrycks et al.) with its `problem` / `level` / `type` / `solution`
fields in one default config, maintained as the copy lighteval and open-r1 load since the
original `hendrycks/competition_math` repository was taken down. Its test split is disjoint from
MATH-500, so the held-out 500 (paper §5) never overlap the `math500` benchmark.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from lco_cli.errors import ConfigError
from lco_cli.evals.benchmarks import answer_text, cot_prompt
from lco_cli.evals.verify import check_answer, extract_boxed, verify_batch
from lco_cli.tasks.base import Example, Task, Verdict, held_out_split, logger, register_task, row_id, unused_keys
from lco_cli.tasks.rows import SourceRow, read_rows

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TaskConfig

DEFAULT_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
PROMPT_FIELD = "problem"
SOLUTION_FIELD = "solution"


def reference_answer(row: dict, answer_field: str | None) -> str | None:
    """The gold answer of a row: `answer_field`'s value, or the last box of `solution`."""
    if answer_field:
        value = row.get(answer_field)
        text = answer_text(value) if value is not None else ""
        return text or None
    boxed = extract_boxed(str(row.get(SOLUTION_FIELD) or ""))
    if boxed is None or not boxed.strip():
        return None
    return boxed.strip()


def math_examples(rows: list[SourceRow], prompt_field: str, answer_field: str | None) -> tuple[list[Example], int]:
    """(examples, rows skipped for want of an answer); ConfigError for a field missing from a row."""
    answer_key = answer_field or SOLUTION_FIELD
    examples, skipped = [], 0
    for position, r in enumerate(rows):
        if prompt_field not in r.data:
            raise ConfigError(f"task.prompt_field: {r.where} has no field '{prompt_field}' (fields: {', '.join(r.data)})")
        if answer_key not in r.data:
            key = "task.answer_field"
            hint = "" if answer_field else " (MATH schema; or set task.answer_field)"
            raise ConfigError(f"{key}: {r.where} has no field '{answer_key}'{hint} (fields: {', '.join(r.data)})")
        answer = reference_answer(r.data, answer_field)
        if answer is None:
            skipped += 1
            continue
        solution = r.data.get(SOLUTION_FIELD)
        demo = str(solution) if isinstance(solution, str) and solution.strip() else None
        examples.append(Example(row_id(r.data, position), str(r.data[prompt_field]), answer, demo, r.data))
    return examples, skipped


@register_task("math")
class MathTask(Task):
    """Math word problems with a math-verify verifier (paper §5: MATH train, 500 held out)."""

    has_verifier = True
    max_new_tokens = 2048  # the paper's sequence length (§5)

    def __init__(self, cfg: "TaskConfig", seed: int = 0):
        rows = load_math_rows(cfg)
        prompt_field = cfg.prompt_field or PROMPT_FIELD
        examples, skipped = math_examples(rows, prompt_field, cfg.answer_field)
        source = cfg.source or DEFAULT_SOURCE
        if not examples:
            where = f"task.answer_field '{cfg.answer_field}'" if cfg.answer_field else "a \\boxed{} answer in 'solution'"
            raise ConfigError(f"task.source: no row of {source} has {where} ({len(rows)} rows read)")
        if skipped:
            logger.warning("warning: task.source: skipped %d of %d rows of %s without an extractable answer",
                           skipped, len(rows), source)
        self.train, self.test = held_out_split(examples, cfg.n_test, cfg.split_seed, "math")
        self._warned_plain = False

    @classmethod
    def config_errors(cls, cfg: "TaskConfig") -> list[str]:
        # Demonstrations are the rows' `solution`s; response_field belongs to `prompts`.
        return super().config_errors(cfg) + unused_keys(cfg, ("response_field",), cls.name)

    @classmethod
    def default_max_new_tokens(cls, cfg: "TaskConfig") -> int:
        from lco_cli.tasks import tiny_math

        return tiny_math.MAX_NEW_TOKENS if cfg.source == tiny_math.SOURCE else cls.max_new_tokens

    def render(self, example: Example, tokenizer: Any) -> str:
        if not getattr(tokenizer, "chat_template", None) and not self._warned_plain:
            logger.warning("warning: task math: the tokenizer has no chat template; prompts are plain text")
            self._warned_plain = True
        return cot_prompt(example.prompt, tokenizer)

    def check(self, example: Example, response: str) -> Verdict:
        return check_answer(example.answer, response)

    def check_batch(self, examples: Sequence[Example], responses: Sequence[str], timeout: float = 5.0) -> list[Verdict]:
        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
        return verify_batch([e.answer for e in examples], list(responses), timeout=timeout)


def load_math_rows(cfg: "TaskConfig") -> list[SourceRow]:
    """Rows of task.source (default: the hub MATH train set; 'tiny-math': the generated set), capped by task.limit."""
    from lco_cli.tasks import tiny_math

    if cfg.source == tiny_math.SOURCE:
        rows = [SourceRow(tiny_math.SOURCE, i, row) for i, row in enumerate(tiny_math.generate_rows())]
    else:
        rows = read_rows(cfg.source or DEFAULT_SOURCE, cfg.split)
    return rows[: cfg.limit] if cfg.limit else rows
