"""Models lco builds itself (`tiny`, `tiny-math`, `random:<arch>`): once per folder, under a file lock,
written atomically, with a marker saying what was built (a changed spec or seed rebuilds)."""
from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Callable

from lco_cli.runtime.rundir import atomic_dir


def build_once(out_dir: Path, marker: str, wanted: dict, make: Callable[[], tuple], extra: Callable[[Path], None] | None = None) -> Path:
    """`make() -> (model, tokenizer)` saved into `out_dir` unless its `marker` file already records `wanted`;
    `extra(tmp)` writes any further files into the folder before it appears."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (DDP ranks) may ask at once: build under a file lock, once.
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / marker).exists() and json.loads((out_dir / marker).read_text()) == wanted:
            return out_dir
        model, tok = make()
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            if extra is not None:
                extra(tmp)
            (tmp / marker).write_text(json.dumps(wanted))
        return out_dir


def seeded_qwen2(arch: dict, vocab_size: int, seed: int, tok, bos_token_id: int | None):
    """A randomly initialised Qwen2 causal LM of `arch` (hidden, intermediate, layers, heads, kv_heads,
    positions), seeded without touching the caller's RNG stream."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(
        vocab_size=vocab_size, hidden_size=arch["hidden"], intermediate_size=arch["intermediate"],
        num_hidden_layers=arch["layers"], num_attention_heads=arch["heads"], num_key_value_heads=arch["kv_heads"],
        max_position_embeddings=arch["positions"], tie_word_embeddings=True,
        bos_token_id=bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model
