"""Preference pairs for DPO: self-generated and verifier-labelled, or read from a file / hub dataset.

`self` is the paper's construction for math: sample responses per task prompt, label each with the
verifier, pair correct with incorrect responses of the same prompt. Held-out pairs are split by
prompt, so no prompt appears in both splits.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass

from lco_cli.data.sft import format_prompt, load_rows
from lco_cli.errors import ConfigError


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str
    split: str = "train"


def _held_out(prompt: str, fraction: float, seed: int) -> bool:
    """Deterministic prompt-level split (stable across runs and processes)."""
    h = int(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def pairs_from_samples(prompts: list[str], responses: list[list[str]], verdicts: list[list[bool]], *,
                       max_per_prompt: int, max_pairs: int, eval_fraction: float, seed: int) -> list[Pair]:
    """Pair each prompt's distinct correct responses with its distinct incorrect ones."""
    rng = random.Random(seed)
    out: list[Pair] = []
    for prompt, resps, oks in zip(prompts, responses, verdicts):
        good = sorted({r for r, ok in zip(resps, oks) if ok})
        bad = sorted({r for r, ok in zip(resps, oks) if not ok})
        combos = [(g, b) for g in good for b in bad]
        rng.shuffle(combos)
        split = "eval" if _held_out(prompt, eval_fraction, seed) else "train"
        out.extend(Pair(prompt, g, b, split) for g, b in combos[:max_per_prompt])
    rng.shuffle(out)
    return out[:max_pairs]


def sampler_refs(sampler: str | list[str]) -> list[str]:
    """`rm.pairs.sampler` as a list of model references (one, or several as in the paper)."""
    return [sampler] if isinstance(sampler, str) else list(sampler)


def merge_samples(per_sampler: list[tuple[list[list[str]], list[list[bool]]]]) -> tuple[list[list[str]], list[list[bool]]]:
    """Join several samplers' (responses, verdicts), each indexed [prompt][sample] over the same
    prompts, into one pool per prompt (sampler order kept) for `pairs_from_samples`."""
    if not per_sampler:
        return [], []
    n_prompts = {len(responses) for responses, _ in per_sampler} | {len(verdicts) for _, verdicts in per_sampler}
    if len(n_prompts) != 1:
        raise ValueError(f"samplers answered different numbers of prompts: {sorted(n_prompts)}")
    responses = [sum((r[i] for r, _ in per_sampler), []) for i in range(n_prompts.pop())]
    verdicts = [sum((v[i] for _, v in per_sampler), []) for i in range(len(responses))]
    return responses, verdicts


def _message_text(value, tokenizer, use_template: bool = True) -> tuple[str | None, str]:
    """A chosen/rejected value as (prompt or None, response): plain text or a chat message list."""
    if isinstance(value, str):
        return None, value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        history = value[:-1]
        prompt = None
        if history:
            if use_template and getattr(tokenizer, "chat_template", None):
                prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
            else:
                prompt = "".join(f"{m['role']}: {m['content']}\n" for m in history) + "assistant: "
        return prompt, str(value[-1]["content"])
    raise ConfigError("rm.pairs: 'chosen'/'rejected' must be strings or message lists ending in an assistant turn")


def pairs_from_rows(rows: list[dict], tokenizer, *, eval_fraction: float, seed: int, max_pairs: int) -> list[Pair]:
    """Rows with prompt/chosen/rejected (plain) or chosen/rejected message lists (UltraFeedback layout)."""
    out = []
    for i, row in enumerate(rows):
        for name in ("chosen", "rejected"):
            if name not in row:
                raise ConfigError(f"rm.pairs: row {i} has no field '{name}' (fields: {', '.join(row)})")
        p_chosen, chosen = _message_text(row["chosen"], tokenizer)
        _, rejected = _message_text(row["rejected"], tokenizer)
        prompt = p_chosen
        if prompt is None:
            if "prompt" not in row:
                raise ConfigError(f"rm.pairs: row {i} has no 'prompt' and plain-text chosen/rejected")
            prompt = format_prompt(tokenizer, str(row["prompt"]))
        split = "eval" if _held_out(prompt, eval_fraction, seed) else "train"
        out.append(Pair(prompt, chosen, rejected, split))
    return out[:max_pairs]


def load_file_pairs(cfg, tokenizer, seed: int) -> list[Pair]:
    rows = load_rows(cfg.path, cfg.split, cfg.limit, key="rm.pairs.path")
    return pairs_from_rows(rows, tokenizer, eval_fraction=cfg.eval_fraction, seed=seed, max_pairs=cfg.max_pairs)


def as_rows(pairs: list[Pair]) -> list[dict]:
    return [asdict(p) for p in pairs]
