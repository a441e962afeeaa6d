"""Model references, loading (dtype, checkpointing, LoRA), saving — and the built-in models.

Every stage loads models the same way, whether `model.policy` is a hub id, a local folder, the
built-in `tiny` spec or a `random:ARCH` real-size architecture (both built once into `RUN_DIR/base/`
as an ordinary HF folder, so later stages load them exactly like a hub model).

Precision (`model.dtype: auto`, the default): frozen models (reference, φ_DPO, φ_ref) load in the
compute dtype — bfloat16 where CUDA supports it, else float32 — and trained models keep float32
master weights (bf16 compute through the stage's `mixed_precision`): AdamW moves a weight by about
lr per step (paper: 5e-6), under half of bfloat16's spacing near a typical weight (|w| ≈ 0.02:
2⁻⁸·0.02 ≈ 8e-5), so pure-bf16 updates would round away.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING

from lco_cli.errors import ConfigError, MissingArtifactError
from lco_cli.runtime.architectures import RANDOM_PREFIX, build_random_model, parse_random_spec
# ReferenceView / reference_for are re-exported: the train stage calls `models.reference_for(policy)`.
from lco_cli.runtime.lora import (LORA_SAVE_ATTR, ReferenceView, adapter_base, apply_lora, is_adapter_dir,  # noqa: F401
                                  reference_for, save_adapter)
from lco_cli.runtime.builds import build_once, seeded_qwen2
from lco_cli.runtime.rundir import STAGES_WITH_FINAL, atomic_dir
from lco_cli.tasks.tiny_math import resolve_spec as resolve_tiny_math

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import ModelConfig, Preset
    from lco_cli.runtime.rundir import RunDir

TINY_DEFAULTS = {"hidden": 128, "layers": 4, "heads": 4, "kv_heads": 4, "intermediate": 512, "positions": 64}
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
# Printable ASCII without the whitespace beyond space: digits and operators for the task, letters
# so that file-sourced pairs and tests still tokenize.
TINY_CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def parse_tiny_spec(spec: str) -> dict | None:
    """'tiny' or 'tiny:hidden=64,layers=2' -> architecture dict; None for anything else."""
    if spec != "tiny" and not spec.startswith("tiny:"):
        return None
    arch = dict(TINY_DEFAULTS)
    if ":" in spec:
        for part in filter(None, spec.split(":", 1)[1].split(",")):
            key, _, val = part.partition("=")
            if key not in TINY_DEFAULTS or not val.isdigit() or int(val) <= 0:
                raise ConfigError(f"model.policy: bad tiny spec '{part}' (keys: {', '.join(TINY_DEFAULTS)}, positive ints)")
            arch[key] = int(val)
    if arch["hidden"] % arch["heads"] or arch["heads"] % arch["kv_heads"]:
        raise ConfigError("model.policy: tiny spec needs hidden % heads == 0 and heads % kv_heads == 0")
    return arch


def char_tokenizer():
    """A character-level fast tokenizer (BPE with no merges = one token per character)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in TINY_CHARS:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk_token"]))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tok.padding_side = "left"  # generation pads on the left; training collators pad explicitly
    return tok


def build_tiny(spec: str, seed: int, out_dir: Path) -> Path:
    """Build the tiny Qwen2 model + char tokenizer into `out_dir` (idempotent, atomic)."""
    arch = parse_tiny_spec(spec)

    def make():
        tok = char_tokenizer()
        return seeded_qwen2(arch, len(tok), seed, tok, bos_token_id=tok.bos_token_id), tok

    return build_once(out_dir, "lco_tiny.json", {"spec": spec, "seed": seed, "arch": arch}, make)


def build_random(spec: str, seed: int, out_dir: Path) -> Path:
    """Build a random-weight real-size model (`random:ARCH`) into `out_dir` in bfloat16 (idempotent, atomic)."""
    name = parse_random_spec(spec)

    def make():
        import torch

        return build_random_model(name, seed, dtype=torch.bfloat16)  # bf16 on disk, as published

    return build_once(out_dir, "lco_random.json", {"spec": spec, "seed": seed}, make)


def build_builtin(spec: str, seed: int, out_dir: Path) -> Path | None:
    """Build `tiny…` or `random:…` into `out_dir`; None when `spec` is neither."""
    if parse_tiny_spec(spec) is not None:
        return build_tiny(spec, seed, out_dir)
    if parse_random_spec(spec) is not None:
        return build_random(spec, seed, out_dir)
    return None


def check_policy_spec(policy: str) -> None:
    """Raise ConfigError (exit 2) for a malformed built-in spec; other references are checked when loaded."""
    parse_tiny_spec(policy)
    parse_random_spec(policy)


def benchmark_only_warning(policy: str) -> str | None:
    """The warning `lco validate` prints for `random:` policies (they are for benchmarks only)."""
    if not policy.startswith(RANDOM_PREFIX):
        return None
    return (f"warning: model.policy '{policy}' is a randomly initialised model with a stand-in tokenizer: for "
            "benchmarks only (memory, step time, GPU checks); nothing it learns or scores means anything")


def looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or Path(ref).suffix in (".json", ".jsonl", ".yaml")


def resolve_model_ref(ref: str, run: "RunDir", preset: "Preset") -> str:
    """Stage name -> its final/; 'base' -> model.policy (building tiny); else a path or hub id."""
    ref = resolve_tiny_math(preset.model.policy if ref == "base" else ref, preset.seed, run.path / "base") or ref
    if ref == "base":
        policy = preset.model.policy
        built = build_builtin(policy, preset.seed, run.path / "base")
        if built is not None:
            return str(built)
        return resolve_model_ref(policy, run, preset) if policy in STAGES_WITH_FINAL else policy
    if ref in STAGES_WITH_FINAL:
        final = run.stage(ref).final
        if not final.exists():
            raise MissingArtifactError(f"stage '{ref}' has no output: {final} (run `lco {ref}` first)")
        return str(final)
    built = build_builtin(ref, preset.seed, run.path / "base")
    if built is not None:
        return str(built)
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if looks_like_path(ref) or ref.count("/") != 1:
        raise MissingArtifactError(f"model not found: {ref} (not a stage name, an existing path, or a hub id 'org/name')")
    return ref  # hub id


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def auto_compute_dtype() -> str:
    """'bfloat16' where CUDA supports it, else 'float32' (CPUs run bf16 matmuls slowly and inexactly)."""
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def weights_dtype(cfg: "ModelConfig", *, trainable: bool):
    """The dtype a model is loaded in: `model.dtype`, with 'auto' resolved (see the module doc)."""
    if cfg.dtype != "auto":
        return torch_dtype(cfg.dtype)
    return torch_dtype("float32" if trainable else auto_compute_dtype())


def load_tokenizer(ref: str, cfg: "ModelConfig"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:  # many base models ship without one
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(ref: str, cfg: "ModelConfig", *, trainable: bool = True):
    """Load a causal LM from a folder or hub id (safetensors, no remote code unless allowed).

    A folder holding a LoRA adapter (`model.lora.save: adapter`) loads as its base with the
    adapter merged in. Frozen models come back in eval mode with requires_grad off everywhere, so
    no optimizer ever holds state for them."""
    model = _from_pretrained(ref, cfg, weights_dtype(cfg, trainable=trainable))
    if trainable:
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        if cfg.lora.enabled:
            model = apply_lora(model, cfg, base_ref=ref)
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


def _from_pretrained(ref: str, cfg: "ModelConfig", dtype):
    from transformers import AutoModelForCausalLM

    if is_adapter_dir(ref):
        from peft import PeftModel

        base = _from_pretrained(adapter_base(ref), cfg, dtype)
        return PeftModel.from_pretrained(base, ref).merge_and_unload()
    kwargs = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code, "use_safetensors": True}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except OSError as exc:
        raise MissingArtifactError(f"could not load model '{ref}': {str(exc).splitlines()[0]}") from None


def enable_checkpointing(model) -> None:
    """Activation checkpointing of every decoder layer, non-reentrant (works with LoRA's frozen
    embeddings, DDP and FSDP2; transformers' default since 5.x, spelled out so it never changes)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def unwrap_for_save(model):
    """Merge LoRA adapters so final/ loads with plain AutoModelForCausalLM.from_pretrained."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


def save_final(model, tokenizer, final_dir: Path, extra: dict[str, dict] | None = None, state_dict: dict | None = None) -> None:
    """Write final/ atomically: weights (merged, or the LoRA adapter alone when `model.lora.save:
    adapter`), tokenizer, and optional JSON side files (`lco_stage.json` then names the base).
    `state_dict`: the full weights gathered from a sharded (FSDP) model, saved instead of `model`'s."""
    extra = dict(extra or {})
    with atomic_dir(final_dir) as tmp:
        if getattr(model, LORA_SAVE_ATTR, "merged") == "adapter":
            extra["lco_stage.json"] = {**extra.get("lco_stage.json", {}), **save_adapter(model, tmp, final_dir)}
        elif state_dict is not None:
            model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        else:
            unwrap_for_save(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, obj in extra.items():
            (tmp / name).write_text(json.dumps(obj, indent=2))



def final_hidden_and_head(model, input_ids, attention_mask):
    """Final (post-norm) hidden states and the lm_head module of a causal LM (LoRA-aware)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = base.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state, base.get_output_embeddings()
