"""Real-size architectures for `model.policy: random:NAME` — benchmarks and GPU checks without downloads.

Each entry copies the shape-determining fields of the published `config.json` of the named model
(layer count, widths, heads, vocabulary, RoPE, tying); the weights are random, and the tokenizer is
a stand-in of exactly `vocab_size` tokens (`standin_tokenizer`). Nothing trained this way means
anything: these models exist to measure memory and step time at the paper's sizes
(`lco validate` says so).
"""
from __future__ import annotations

from lco_cli.errors import ConfigError

RANDOM_PREFIX = "random:"

_QWEN_COMMON = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "attention_dropout": 0.0}
_LLAMA3_COMMON = {"hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500_000.0, "attention_bias": False,
                  "mlp_bias": False, "max_position_embeddings": 131072}


def _llama3_rope(factor: float) -> dict:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


# Values from the models' published config.json files (Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-3B, Qwen/Qwen2.5-7B, Qwen/Qwen3-4B,
# Qwen/Qwen3-8B, meta-llama/Llama-3.2-3B, meta-llama/Llama-3.1-8B). `params` is the published total
# parameter count (billions, embeddings included), which a test checks the built config against.
ARCHITECTURES: dict[str, dict] = {
    "qwen2.5-0.5b": {"model_type": "qwen2", "params": 0.49, "config": {
        **_QWEN_COMMON, "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768, "tie_word_embeddings": True}},
    "qwen2.5-3b": {"model_type": "qwen2", "params": 3.09, "config": {
        **_QWEN_COMMON, "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 32768, "tie_word_embeddings": True}},
    "qwen2.5-7b": {"model_type": "qwen2", "params": 7.62, "config": {
        **_QWEN_COMMON, "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 131072, "tie_word_embeddings": False}},
    "qwen3-4b": {"model_type": "qwen3", "params": 4.02, "config": {
        **_QWEN_COMMON, "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
        "tie_word_embeddings": True}},
    "qwen3-8b": {"model_type": "qwen3", "params": 8.19, "config": {
        **_QWEN_COMMON, "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
        "tie_word_embeddings": False}},
    "llama3.2-3b": {"model_type": "llama", "params": 3.21, "config": {
        **_LLAMA3_COMMON, "vocab_size": 128256, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True,
        "rope_scaling": _llama3_rope(32.0)}},
    "llama3.1-8b": {"model_type": "llama", "params": 8.03, "config": {
        **_LLAMA3_COMMON, "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False, "rope_scaling": _llama3_rope(8.0)}},
}


def parse_random_spec(spec: str) -> str | None:
    """'random:qwen2.5-3b' -> 'qwen2.5-3b'; None for anything that is not a `random:` spec."""
    if not spec.startswith(RANDOM_PREFIX):
        return None
    name = spec[len(RANDOM_PREFIX):]
    if name not in ARCHITECTURES:
        raise ConfigError(f"model.policy: unknown architecture '{name}' in '{spec}' (known: {', '.join(ARCHITECTURES)})")
    return name


def architecture_config(name: str, tokenizer=None):
    """The transformers config of architecture `name` (special-token ids from `tokenizer` when given)."""
    from transformers import AutoConfig

    entry = ARCHITECTURES[name]
    kwargs = dict(entry["config"])
    if tokenizer is not None:
        kwargs.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return AutoConfig.for_model(entry["model_type"], **kwargs)


def standin_tokenizer(vocab_size: int):
    """The character tokenizer padded with `<|filler_i|>` tokens to exactly `vocab_size` entries.

    Real text still tokenizes (one token per character); the fillers only make the embedding and
    lm_head shapes those of the real model, which is what a memory/step-time benchmark needs."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from lco_cli.runtime.models import SPECIAL_TOKENS, TINY_CHARS

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in TINY_CHARS:
        vocab.setdefault(ch, len(vocab))
    for i in range(vocab_size - len(vocab)):
        vocab[f"<|filler_{i}|>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk_token"]))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tok.padding_side = "left"
    return tok


def build_random_model(name: str, seed: int, dtype=None, device=None):
    """(model, tokenizer) of architecture `name` with random weights (seeded) in `dtype` on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = standin_tokenizer(ARCHITECTURES[name]["config"]["vocab_size"])
    cfg = architecture_config(name, tok)
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
