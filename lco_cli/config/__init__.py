"""Typed preset configuration: dataclasses, loading, overrides, validation.

A preset is one YAML file with the sections `model`, `task`, `sft`, `rm`, `train`, `eval` plus
`name`, `description` and `seed` (DESIGN §4). Every field is declared here with its type, a
one-line doc (``doc``) and its constraints (``choices``, ``gt``, ``ge``, ``le``); unknown keys
are errors. Validation collects *every* problem before reporting, so `lco validate` shows them
all at once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin

import yaml

from lco_cli.errors import ConfigError

STAGES = ("sft", "rm", "train", "eval")
ALGOS = ("lco", "reinforce", "ppo", "grpo", "dapo", "gspo", "gkd", "minillm")
BENCHMARK_NAMES = ("arith", "math500", "amc23", "minerva")
DEFAULT_PRESET = "tiny"


def F(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = None, **checks: Any):
    """A dataclass field with a one-line doc and optional checks (choices/gt/ge/le)."""
    meta = {"doc": doc, **checks}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections


@dataclass
class LoraConfig:
    """LoRA adapters through peft (applies to every training stage when enabled)."""

    enabled: bool = F(False, doc="Train LoRA adapters instead of all weights.")
    r: int = F(16, doc="LoRA rank.", gt=0)
    alpha: int = F(32, doc="LoRA scaling alpha.", gt=0)
    dropout: float = F(0.05, doc="LoRA dropout.", ge=0, le=1)
    target_modules: Union[str, list[str]] = F("all-linear", doc="Modules to adapt ('all-linear' or a list of names).")


@dataclass
class ModelConfig:
    """The initial policy and how models are loaded."""

    policy: str = F("tiny", doc="Hub id, local path, or built-in spec 'tiny' / 'tiny:hidden=128,layers=4,heads=4'.")
    dtype: str = F("float32", doc="Weights dtype.", choices=("float32", "bfloat16", "float16"))
    trust_remote_code: bool = F(False, doc="Allow custom model code from the hub (off unless you trust it).")
    attn_implementation: Optional[str] = F(None, doc="Attention kernel passed to from_pretrained (e.g. 'sdpa', 'flash_attention_2').")
    gradient_checkpointing: bool = F(False, doc="Recompute activations in backward to save memory.")
    lora: LoraConfig = F(doc="LoRA settings.", factory=LoraConfig)


@dataclass
class TaskConfig:
    """The built-in synthetic verifiable task (train prompts for sft/rm/train, `arith` benchmark)."""

    name: str = F("arith", doc="Task name in the task registry.", choices=("arith",))
    op: str = F("mul", doc="Arithmetic operation.", choices=("add", "mul"))
    digits: int = F(2, doc="Digits per operand.", ge=1, le=6)
    n_test: int = F(400, doc="Held-out problems (deterministic from the seed, never trained on).", ge=1)
    slip_rate: float = F(0.0, doc="Probability that an SFT demonstration is written with the carry slip (every column added without carrying, 57+68=15; problems without a carry are unaffected; add only): an imperfect teacher for RL to correct.", ge=0, le=1)


@dataclass
class DataConfig:
    """Where supervised examples come from: the task, a local JSON/JSONL file, or a hub dataset."""

    source: str = F("task", doc="'task' (the synthetic task), a local .json/.jsonl path, or a hub dataset id.")
    split: str = F("train", doc="Dataset split for hub datasets.")
    prompt_field: str = F("prompt", doc="Field holding the prompt text.")
    response_field: str = F("response", doc="Field holding the target response text.")
    messages_field: Optional[str] = F(None, doc="Field holding chat messages (list of {role, content}); overrides prompt/response.")
    limit: Optional[int] = F(None, doc="Use at most this many rows (the paper uses 1,000).", gt=0)
    chat_template: bool = F(True, doc="Format prompts with the tokenizer's chat template when it has one.")


@dataclass
class SFTConfig:
    """Supervised warm-up on responses (loss on response tokens only)."""

    init_from: str = F("base", doc="'base' (model.policy), another stage name, or a path / hub id.")
    data: DataConfig = F(doc="Training data.", factory=DataConfig)
    lr: float = F(1e-3, doc="Peak learning rate (AdamW).", gt=0)
    weight_decay: float = F(0.0, doc="AdamW weight decay.", ge=0)
    warmup_ratio: float = F(0.05, doc="Fraction of steps spent in linear warmup before cosine decay.", ge=0, le=1)
    batch_size: int = F(64, doc="Global examples per optimizer step.", gt=0)
    micro_batch_size: int = F(64, doc="Examples per forward pass on one process (gradient accumulation fills the rest).", gt=0)
    epochs: float = F(1.0, doc="Passes over the data (the task's train split counts its distinct problems).", gt=0)
    max_steps: Optional[int] = F(None, doc="Cap on optimizer steps (overrides epochs when smaller).", gt=0)
    max_length: int = F(512, doc="Truncate prompt+response to this many tokens.", gt=1)
    max_grad_norm: float = F(1.0, doc="Gradient clipping norm (0 disables).", ge=0)
    mixed_precision: str = F("no", doc="accelerate mixed precision.", choices=("no", "bf16", "fp16"))
    checkpoint_every: int = F(200, doc="Save a resumable checkpoint every N steps.", gt=0)
    keep_checkpoints: int = F(2, doc="Keep the newest N checkpoints.", gt=0)
    log_every: int = F(10, doc="Write a metrics row every N steps.", gt=0)
    eval_problems: int = F(200, doc="Held-out problems for the greedy accuracy in sft/eval.json (verifiable tasks).", ge=0)


@dataclass
class PairsConfig:
    """Preference pairs for the DPO reward model."""

    source: str = F("self", doc="'self' (sample + verify), 'file' (local JSON/JSONL) or 'hub' (dataset id).", choices=("self", "file", "hub"))
    path: Optional[str] = F(None, doc="File path or hub id for source file/hub.")
    split: str = F("train", doc="Split for hub datasets.")
    sampler: str = F("init", doc="Model that samples responses for 'self': 'init' (rm.init_from), a stage name or a path.")
    n_prompts: int = F(512, doc="Task prompts to sample for 'self'.", gt=0)
    samples_per_prompt: int = F(8, doc="Responses sampled per prompt for 'self'.", ge=2)
    temperature: float = F(1.0, doc="Sampling temperature for 'self'.", gt=0)
    top_p: float = F(1.0, doc="Nucleus sampling for 'self'.", gt=0, le=1)
    max_new_tokens: int = F(16, doc="Response length cap for 'self'.", gt=0)
    max_pairs_per_prompt: int = F(4, doc="At most this many (chosen, rejected) pairs per prompt.", gt=0)
    max_pairs: int = F(4096, doc="Cap on the total number of pairs.", gt=0)
    eval_fraction: float = F(0.1, doc="Fraction of prompts held out for rm/eval.json.", ge=0, lt=1)
    limit: Optional[int] = F(None, doc="Use at most this many rows from file/hub.", gt=0)


@dataclass
class RMConfig:
    """DPO reward model φ_DPO trained from rm.init_from (φ_ref = the frozen init)."""

    init_from: str = F("sft", doc="Stage name, path or hub id of φ_ref (and the init of φ_DPO).")
    beta: float = F(0.1, doc="DPO β.", gt=0)
    nll_weight: float = F(0.0, doc="α of an added chosen-response NLL term (RPO, Pang et al. 2024); 0 = pure DPO as in the paper.", ge=0)
    lr: float = F(1e-6, doc="Peak learning rate (paper: 1e-6).", gt=0)
    weight_decay: float = F(0.0, doc="AdamW weight decay.", ge=0)
    warmup_ratio: float = F(0.1, doc="Fraction of steps in linear warmup before cosine decay.", ge=0, le=1)
    batch_size: int = F(32, doc="Global pairs per optimizer step.", gt=0)
    micro_batch_size: int = F(32, doc="Pairs per forward pass on one process.", gt=0)
    epochs: float = F(1.0, doc="Passes over the pairs (paper: 1).", gt=0)
    max_steps: Optional[int] = F(None, doc="Cap on optimizer steps.", gt=0)
    max_length: int = F(512, doc="Truncate prompt+response to this many tokens.", gt=1)
    max_grad_norm: float = F(1.0, doc="Gradient clipping norm (0 disables).", ge=0)
    mixed_precision: str = F("no", doc="accelerate mixed precision.", choices=("no", "bf16", "fp16"))
    checkpoint_every: int = F(200, doc="Save a resumable checkpoint every N steps.", gt=0)
    keep_checkpoints: int = F(2, doc="Keep the newest N checkpoints.", gt=0)
    log_every: int = F(10, doc="Write a metrics row every N steps.", gt=0)
    pairs: PairsConfig = F(doc="Preference pairs.", factory=PairsConfig)


@dataclass
class RolloutConfig:
    """How rollouts are sampled."""

    engine: str = F("hf", doc="'hf' (transformers generate, CPU/GPU) or 'vllm' (GPU, optional extra).", choices=("hf", "vllm"))
    temperature: float = F(0.6, doc="Sampling temperature (paper: 0.6).", gt=0)
    top_p: float = F(0.95, doc="Nucleus sampling (paper: 0.95).", gt=0, le=1)
    max_new_tokens: int = F(16, doc="Response length cap (truncated responses are flagged).", gt=0)
    batch_size: int = F(256, doc="Sequences generated per generate() call.", gt=0)


@dataclass
class TelemetryConfig:
    """Diagnostics for the paper's figures (cost extra compute)."""

    split_grad_norm: bool = F(False, doc="Log grad_norm_pos/neg and logit_grad_sampled/other (a second backward).")
    every: int = F(1, doc="Compute the split telemetry every N steps.", gt=0)


@dataclass
class TrainConfig:
    """Policy optimisation: LCO objectives and the baselines, on the same rollouts."""

    init_from: str = F("sft", doc="Initial policy: stage name, path or hub id.")
    algo: str = F("lco", doc="Algorithm.", choices=ALGOS)
    objective: str = F("kld", doc="LCO objective (eqs. 8-10).", choices=("kld", "mse", "lch"))
    advantage: str = F("dpo", doc="Advantage estimator for LCO (eqs. 11-13).", choices=("dpo", "logprob", "sparse"))
    advantage_model: Optional[str] = F(None, doc="φ for advantage=logprob (default: the rm stage's model).")
    reward: str = F("verifier", doc="Sequence reward for sparse advantages and the PG baselines.", choices=("rm", "verifier"))
    advantage_norm: str = F("group", doc="Normalisation of sequence advantages.", choices=("none", "batch", "group"))
    advantage_center: bool = F(True, doc="Center dense advantages over the vocabulary per token (paper §4.4).")
    advantage_clip: Optional[float] = F(None, doc="Clip dense advantages to ±value (off by default).", gt=0)
    advantage_topk: Optional[int] = F(None, doc="Limit dense advantages to the k likeliest behaviour tokens (authors' code; paper: full vocab).", gt=0)
    beta: float = F(1.0, doc="β of the KL-regularised objective (paper: 1.0).", gt=0)
    beta_neg: Optional[float] = F(None, doc="β for tokens whose sampled-token advantage is negative (default: beta).", gt=0)
    steps: int = F(100, doc="Optimizer steps (each on a fresh rollout batch).", gt=0)
    batch_size: int = F(32, doc="Prompts per step.", gt=0)
    samples_per_prompt: int = F(4, doc="Responses per prompt.", gt=0)
    micro_batch_size: int = F(64, doc="Sequences per forward pass on one process.", gt=0)
    update_epochs: int = F(1, doc="Passes over each rollout batch (>1 freezes the behaviour logits).", gt=0)
    minibatches: int = F(1, doc="Optimizer steps per rollout batch and epoch.", gt=0)
    lr: float = F(5e-6, doc="Peak learning rate (paper: 5e-6 for LCO).", gt=0)
    weight_decay: float = F(0.0, doc="AdamW weight decay.", ge=0)
    warmup_steps: int = F(0, doc="Linear warmup steps, then constant.", ge=0)
    max_grad_norm: float = F(1.0, doc="Gradient clipping norm (0 disables).", ge=0)
    loss_chunk_size: int = F(512, doc="Tokens per chunk of the full-vocabulary loss engine.", gt=0)
    mixed_precision: str = F("no", doc="accelerate mixed precision.", choices=("no", "bf16", "fp16"))
    eval_every: int = F(25, doc="Held-out greedy accuracy every N steps (0 disables).", ge=0)
    eval_problems: int = F(200, doc="Held-out problems for that accuracy.", ge=0)
    checkpoint_every: int = F(50, doc="Save a resumable checkpoint every N steps.", gt=0)
    keep_checkpoints: int = F(2, doc="Keep the newest N checkpoints.", gt=0)
    log_every: int = F(1, doc="Write a metrics row every N steps.", gt=0)
    max_skipped: int = F(5, doc="Fail the stage after this many consecutive non-finite steps.", gt=0)
    rollout: RolloutConfig = F(doc="Rollout sampling.", factory=RolloutConfig)
    telemetry: TelemetryConfig = F(doc="Diagnostics.", factory=TelemetryConfig)
    algo_args: dict[str, Any] = F(doc="Knobs of the chosen baseline algorithm (see docs/presets.md).", factory=dict)


@dataclass
class EvalConfig:
    """Benchmark evaluation: pass@1 ± stderr over k samples per problem."""

    policies: list[str] = F(doc="Stage names, 'base', 'pi_star', 'rm', paths or hub ids.", factory=lambda: ["sft", "train"])
    benchmarks: list[str] = F(doc="Benchmark names.", factory=lambda: ["arith"], choices=BENCHMARK_NAMES)
    samples: int = F(4, doc="k samples per problem.", ge=1)
    temperature: float = F(0.6, doc="Sampling temperature (0 = greedy; paper: 0.6).", ge=0)
    top_p: float = F(0.95, doc="Nucleus sampling (paper: 0.95).", gt=0, le=1)
    max_new_tokens: int = F(16, doc="Generation length cap.", gt=0)
    batch_size: int = F(256, doc="Sequences per generate() call.", gt=0)
    limit: Optional[int] = F(None, doc="Evaluate at most this many problems per benchmark.", gt=0)
    data: dict[str, str] = F(doc="Local files per benchmark name (same schema as the hub dataset).", factory=dict)
    verify_timeout: float = F(5.0, doc="Seconds per answer check before it counts as wrong.", gt=0)


@dataclass
class Preset:
    """A whole pipeline."""

    name: str = F("tiny", doc="Run name (default run dir: runs/<name>).")
    description: str = F("", doc="One-line description shown by `lco presets`.")
    seed: int = F(0, doc="Global seed.", ge=0)
    model: ModelConfig = F(doc="Models.", factory=ModelConfig)
    task: TaskConfig = F(doc="Synthetic task.", factory=TaskConfig)
    sft: SFTConfig = F(doc="SFT stage.", factory=SFTConfig)
    rm: RMConfig = F(doc="Reward-model stage.", factory=RMConfig)
    train: TrainConfig = F(doc="Policy-training stage.", factory=TrainConfig)
    eval: EvalConfig = F(doc="Evaluation stage.", factory=EvalConfig)


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + " or null"
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    """Convert a YAML value to the field type, recording an error naming `key` on mismatch."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
        for arg in args:
            trial: list[str] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        errors.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
            return tp()
        return _build(tp, value, key, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{key}: expected a list, got {value!r}")
            return []
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping, got {value!r}")
            return {}
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-6' as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    errors.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return None


def _check_constraints(f: dataclasses.Field, value: Any, key: str, errors: list[str]) -> None:
    meta = f.metadata
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    for v in values:
        if "choices" in meta and v not in meta["choices"]:
            errors.append(f"{key}: {v!r} is not one of {', '.join(map(str, meta['choices']))}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if "gt" in meta and not v > meta["gt"]:
            errors.append(f"{key}: must be > {meta['gt']}, got {v}")
        if "ge" in meta and not v >= meta["ge"]:
            errors.append(f"{key}: must be >= {meta['ge']}, got {v}")
        if "lt" in meta and not v < meta["lt"]:
            errors.append(f"{key}: must be < {meta['lt']}, got {v}")
        if "le" in meta and not v <= meta["le"]:
            errors.append(f"{key}: must be <= {meta['le']}, got {v}")


def _build(cls: type, data: dict, prefix: str, errors: list[str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"{prefix}.{k}" if prefix else str(k)
            errors.append(f"{where}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = _coerce(data[name], hints[name], key, errors)
        _check_constraints(f, value, key, errors)
        kwargs[name] = value
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not None or _optional(hints[k])})
    except TypeError as exc:  # pragma: no cover - all fields have defaults
        errors.append(f"{prefix}: {exc}")
        return cls()


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _cross_checks(p: Preset, errors: list[str]) -> None:
    """Constraints that involve more than one field."""
    t = p.train
    if t.algo in ("grpo", "dapo", "gspo") and t.samples_per_prompt < 2:
        errors.append(f"train.samples_per_prompt: {t.algo} needs >= 2 samples per prompt for group advantages")
    if t.advantage_norm == "group" and t.samples_per_prompt < 2 and (t.advantage == "sparse" or t.algo != "lco"):
        errors.append("train.advantage_norm: 'group' needs train.samples_per_prompt >= 2")
    if p.task.slip_rate > 0 and p.task.op != "add":
        errors.append("task.slip_rate: the carry slip is defined for task.op 'add' only")
    if p.rm.pairs.source in ("file", "hub") and not p.rm.pairs.path:
        errors.append(f"rm.pairs.path: required when rm.pairs.source is '{p.rm.pairs.source}'")
    if t.rollout.engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            errors.append("train.rollout.engine: 'vllm' needs the optional extra (pip install 'lco[vllm]')")
    for stage in ("sft", "rm"):
        sec = getattr(p, stage)
        if sec.batch_size % sec.micro_batch_size and sec.micro_batch_size < sec.batch_size:
            errors.append(f"{stage}.micro_batch_size: must divide {stage}.batch_size ({sec.batch_size})")
    for name in p.eval.data:
        if name not in BENCHMARK_NAMES:
            errors.append(f"eval.data.{name}: unknown benchmark (known: {', '.join(BENCHMARK_NAMES)})")
    if t.algo != "lco":
        errors.extend(_algo_args_errors(t.algo, t.algo_args))
        gs = t.algo_args.get("group_size")
        if gs is not None and gs != t.samples_per_prompt:
            errors.append(f"train.algo_args.group_size: {gs} conflicts with train.samples_per_prompt "
                          f"({t.samples_per_prompt}); leave it out, it follows samples_per_prompt")
    elif t.algo_args:
        errors.append("train.algo_args: only for the baseline algorithms (train.algo is 'lco')")


def _algo_args_errors(algo: str, args: dict) -> list[str]:
    """Validate train.algo_args against the chosen baseline's own Config dataclass."""
    try:
        from lco_cli.losses.baselines import ALGOS as BASELINES
    except ImportError:  # baselines not importable (should not happen in a full install)
        return []
    cfg_cls = getattr(BASELINES.get(algo), "Config", None)
    if cfg_cls is None:
        return []
    errs: list[str] = []
    try:  # types and unknown keys here; the algorithm's own value checks run in its __post_init__
        _build(cfg_cls, args, "train.algo_args", errs)
    except ConfigError as exc:
        errs.extend(f"train.algo_args: {d}" for d in (exc.details or [exc.message]))
    return errs


def from_dict(data: dict) -> Preset:
    """Build and validate a Preset; raises ConfigError listing every problem."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError("preset: expected a YAML mapping at the top level")
    preset = _build(Preset, data, "", errors)
    if not errors:
        _cross_checks(preset, errors)
    if errors:
        raise ConfigError(f"invalid preset ({len(errors)} problem{'s' * (len(errors) > 1)})", errors)
    return preset


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


# --------------------------------------------------------------------------- presets & overrides


def bundled_presets() -> dict[str, Path]:
    """Bundled preset name -> file (shipped inside the installed package)."""
    root = importlib.resources.files("lco_cli.presets")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def read_preset_file(preset: str | None) -> tuple[str, dict]:
    """Return (preset name, raw mapping) for a bundled name or a YAML path."""
    preset = preset or DEFAULT_PRESET
    bundled = bundled_presets()
    if preset in bundled:
        path = bundled[preset]
    else:
        path = Path(preset)
        if not path.suffix and not path.exists():
            raise ConfigError(f"preset: unknown preset '{preset}' (bundled: {', '.join(sorted(bundled))}; or give a YAML path)")
        if not path.is_file():
            raise ConfigError(f"preset: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset: {path} must hold a mapping at the top level")
    data.setdefault("name", path.stem)
    return path.stem, data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.beta=0.5' -> (['train', 'beta'], 0.5); values parse as YAML scalars or flow lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE (e.g. train.beta=0.5)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': value is not valid YAML") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load(preset: str | None, overrides: list[str] = ()) -> tuple[str, Preset]:
    """Resolve defaults + preset file + overrides into a validated Preset."""
    preset_name, data = read_preset_file(preset)
    data = apply_overrides(data, list(overrides))
    return preset_name, from_dict(data)


def config_hash(obj: Any) -> str:
    blob = json.dumps(obj if isinstance(obj, dict) else to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj if isinstance(obj, dict) else to_dict(obj), sort_keys=False)


# --------------------------------------------------------------------------- docs


def field_docs(cls: type = Preset, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every field, recursively — drives docs/presets.md."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.append((key, "section", "", f.metadata.get("doc", "")))
            rows.extend(field_docs(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        doc = f.metadata.get("doc", "")
        checks = [f"{k} {f.metadata[k]}" for k in ("gt", "ge", "lt", "le") if k in f.metadata]
        if "choices" in f.metadata:
            checks.append("one of " + ", ".join(map(str, f.metadata["choices"])))
        if checks:
            doc += " (" + "; ".join(checks).replace("gt ", "> ").replace("ge ", ">= ").replace("lt ", "< ").replace("le ", "<= ") + ")"
        rows.append((key, _type_name(tp), json.dumps(default), doc))
    return rows
