"""The `prompts` task: instruction datasets without answers (UltraFeedback instructions,
QA-Feedback questions). There is no verifier: rewards can only come from the reward model, and
`lco validate` rejects `train.reward: verifier` and `rm.pairs.source: self` for this task.

A row's prompt is `task.prompt_field` (default `instruction`) or, when the row has no such field
but a `messages` list, that conversation (up to its last user turn). `task.response_field`, when
set, supplies the SFT demonstration (`Example.demo`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lco_cli.data.sft import format_prompt
from lco_cli.errors import ConfigError
from lco_cli.tasks.base import Example, Task, held_out_split, logger, register_task, row_id, unused_keys
from lco_cli.tasks.rows import SourceRow, read_rows

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TaskConfig

PROMPT_FIELD = "instruction"
MESSAGES_FIELD = "messages"


def conversation(data: dict, where: str = "a row") -> list[dict]:
    """The row's `messages` up to and including its last user turn (a trailing answer is dropped)."""
    msgs = data[MESSAGES_FIELD]
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
        raise ConfigError(f"task.prompt_field: {where}: '{MESSAGES_FIELD}' must be a list of {{role, content}}")
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        raise ConfigError(f"task.prompt_field: {where}: '{MESSAGES_FIELD}' has no user turn")
    return [{"role": m["role"], "content": str(m["content"])} for m in msgs[: users[-1] + 1]]


def prompt_example(row: SourceRow, position: int, prompt_field: str, response_field: str | None) -> Example:
    data = row.data
    if prompt_field in data:
        prompt = str(data[prompt_field])
    elif MESSAGES_FIELD in data:
        prompt = conversation(data, row.where)[-1]["content"]
    else:
        raise ConfigError(f"task.prompt_field: {row.where} has neither '{prompt_field}' nor '{MESSAGES_FIELD}' "
                          f"(fields: {', '.join(data)})")
    demo = None
    if response_field:
        if response_field not in data:
            raise ConfigError(f"task.response_field: {row.where} has no field '{response_field}' (fields: {', '.join(data)})")
        demo = str(data[response_field])
    return Example(row_id(data, position), prompt, None, demo, data)


@register_task("prompts")
class PromptsTask(Task):
    """Prompts only: RM reward, no verifier."""

    has_verifier = False
    max_new_tokens = 2048  # instruction answers are open-ended; the paper's sequence length (§5)

    def __init__(self, cfg: "TaskConfig", seed: int = 0):
        if not cfg.source:
            raise ConfigError("task.source: required for task 'prompts' (a JSON/JSONL/parquet file, a folder, or a hub id)")
        rows = read_rows(cfg.source, cfg.split)
        rows = rows[: cfg.limit] if cfg.limit else rows
        self.prompt_field = cfg.prompt_field or PROMPT_FIELD
        examples = [prompt_example(r, i, self.prompt_field, cfg.response_field) for i, r in enumerate(rows)]
        self.train, self.test = held_out_split(examples, cfg.n_test, cfg.split_seed, "prompts")
        self._warned_plain = False

    @classmethod
    def config_errors(cls, cfg: "TaskConfig") -> list[str]:
        errors = super().config_errors(cfg) + unused_keys(cfg, ("answer_field",), cls.name)
        if not cfg.source:
            errors.append("task.source: required for task 'prompts' (a JSON/JSONL/parquet file, a folder, or a hub id)")
        return errors

    @classmethod
    def provides_demos(cls, cfg: "TaskConfig") -> bool:
        return cfg.response_field is not None

    def render(self, example: Example, tokenizer: Any) -> str:
        # A row with a conversation instead of a prompt field renders the whole conversation.
        turns = conversation(example.row) if self.prompt_field not in example.row and MESSAGES_FIELD in example.row else None
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if not has_template and not self._warned_plain:
            logger.warning("warning: task prompts: the tokenizer has no chat template; prompts are plain text")
            self._warned_plain = True
        if turns and has_template:
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        if turns:
            return "".join(f"{m['role']}: {m['content']}\n" for m in turns) + "assistant: "
        return format_prompt(tokenizer, example.prompt)
