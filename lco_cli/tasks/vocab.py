"""Policy and reward model on one tokenizer, with differently padded embedding matrices.

Checkpoints pad their embedding (and LM-head) rows past the tokenizer for kernel efficiency:
Qwen2.5-3B has 151,936 rows and Qwen2.5-7B 152,064 for the same 151,665-token tokenizer. Token-level
advantages compare the two models' logits token by token, so compatibility is decided from the
tokenizers' contents (the token -> id map, added tokens included), never from `config.vocab_size`,
and every comparison runs over the tokenizer's ids `[0, len(tokenizer))` only: padding rows are
cut off (`trim_logits`) or given no probability mass (`mask_padding_logits`).
"""
from __future__ import annotations

from lco_cli.errors import ConfigError


def usable_vocab(tokenizer) -> int:
    """Ids a tokenizer can produce: `len(tokenizer)` (base vocabulary + added tokens)."""
    return len(tokenizer)


def shared_vocab_size(tok_a, tok_b, name_a: str, name_b: str) -> int:
    """The common vocabulary size of two models' tokenizers; ConfigError naming both if they differ.

    Equal `get_vocab()` maps (every token at the same id, added tokens included) mean the same
    ids mean the same strings in both models, whatever their embedding sizes."""
    vocab_a, vocab_b = tok_a.get_vocab(), tok_b.get_vocab()
    if vocab_a != vocab_b:
        only_a = sorted(set(vocab_a) - set(vocab_b))[:3]
        moved = sorted(t for t in set(vocab_a) & set(vocab_b) if vocab_a[t] != vocab_b[t])[:3]
        detail = f"tokens only in '{name_a}': {only_a}" if only_a else f"tokens at different ids: {moved}"
        if not only_a and not moved:
            detail = f"tokens only in '{name_b}': {sorted(set(vocab_b) - set(vocab_a))[:3]}"
        raise ConfigError(f"tokenizers differ: '{name_a}' ({len(vocab_a)} tokens) and '{name_b}' ({len(vocab_b)} tokens) "
                          f"must share one tokenizer for token-level advantages ({detail})")
    return usable_vocab(tok_a)


def check_embedding_covers(model, tokenizer, name: str) -> None:
    """A model must have a logit row for every token id (padding beyond it is fine)."""
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < usable_vocab(tokenizer):
        raise ConfigError(f"model '{name}' has {rows} output rows for a tokenizer of {usable_vocab(tokenizer)} tokens")


def trim_logits(logits, vocab_size: int):
    """Logits `[..., V_padded]` -> `[..., vocab_size]`: the padding rows cut off (a view, no copy)."""
    if logits.shape[-1] < vocab_size:
        raise ValueError(f"logits have {logits.shape[-1]} columns, fewer than the {vocab_size}-token vocabulary")
    return logits[..., :vocab_size]


def mask_padding_logits(logits, vocab_size: int):
    """Logits with the padding columns at -inf (same shape): softmax gives them exactly 0 mass.
    Use where the shape must stay (generation); elsewhere `trim_logits` is cheaper."""
    if logits.shape[-1] <= vocab_size:
        return logits
    out = logits.clone()
    out[..., vocab_size:] = float("-inf")
    return out
