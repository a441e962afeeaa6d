"""Supervised examples: the synthetic task, a local JSON/JSONL file, or a hub dataset.

Rows become (prompt text, response text) pairs; prompts go through the tokenizer's chat template
when it has one (and `data.chat_template` is on), and the loss sees response tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lco_cli.errors import ConfigError, MissingArtifactError

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import DataConfig

FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass
class TextPair:
    prompt: str
    response: str


def load_rows(source: str, split: str = "train", limit: int | None = None, key: str = "sft.data.source") -> list[dict]:
    """Rows of a local JSON/JSONL/parquet file or a hub dataset id, via `datasets`."""
    import datasets

    path = Path(source).expanduser()
    if path.suffix in FILE_SUFFIXES or path.exists():
        if not path.exists():
            raise MissingArtifactError(f"{key}: file not found: {path}")
        fmt = "parquet" if path.suffix == ".parquet" else "json"
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as exc:  # noqa: BLE001 - the hub raises many types; the user needs the id
            raise MissingArtifactError(f"{key}: could not load dataset '{source}' (split {split}): {str(exc).splitlines()[0]}") from None
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return list(ds)


def format_prompt(tokenizer, prompt: str, use_template: bool = True) -> str:
    """Apply the chat template (user turn + generation prompt) when the tokenizer has one."""
    if use_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return prompt


def pairs_from_rows(rows: list[dict], cfg: "DataConfig", tokenizer) -> list[TextPair]:
    out = []
    for i, row in enumerate(rows):
        if cfg.messages_field:
            msgs = row.get(cfg.messages_field)
            if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
                raise ConfigError(f"sft.data.messages_field: row {i} has no message list ending in an assistant turn")
            prompt = _render_messages(tokenizer, msgs[:-1], cfg.chat_template)
            out.append(TextPair(prompt, msgs[-1]["content"]))
            continue
        for name in (cfg.prompt_field, cfg.response_field):
            if name not in row:
                raise ConfigError(f"sft.data: row {i} has no field '{name}' (fields: {', '.join(row)})")
        out.append(TextPair(format_prompt(tokenizer, str(row[cfg.prompt_field]), cfg.chat_template), str(row[cfg.response_field])))
    return out


def _render_messages(tokenizer, messages: list[dict], use_template: bool) -> str:
    if use_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def sft_pairs(cfg: "DataConfig", tokenizer, task) -> list[TextPair]:
    if cfg.source == "task":  # the teacher's demonstrations (arith: with task.slip_rate), rendered by the task
        return task_demo_pairs(task, tokenizer, cfg.limit)
    return pairs_from_rows(load_rows(cfg.source, cfg.split, cfg.limit), cfg, tokenizer)


def task_demo_pairs(task, tokenizer, limit: int | None = None) -> list[TextPair]:
    """SFT pairs from a task's reference responses: (prompt rendered by the task, `Example.demo`).

    Examples without a demonstration are left out; a task with none at all is a ConfigError.
    (arith renders its plain prompts, so the tiny presets' SFT data is what it always was.)"""
    items = [e for e in task.train if e.demo is not None]
    if not items:
        raise ConfigError(f"sft.data.source: task '{task.name}' has no reference responses (set task.response_field, "
                          "or sft.data.source to a file or hub dataset)")
    items = items[:limit] if limit else items
    return [TextPair(task.render(e, tokenizer), e.demo) for e in items]


def tokenize_pair(tokenizer, pair: TextPair, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids + EOS), the prompt trimmed from the left to fit max_length."""
    prompt = tokenizer(pair.prompt, add_special_tokens=True)["input_ids"]
    response = tokenizer(pair.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    response = response[: max_length - 1]
    prompt = prompt[-(max_length - len(response)) :]
    return prompt, response
