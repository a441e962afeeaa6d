"""The preset schema: one typed dataclass per section, a one-line doc and checks per field (DESIGN §4).

A preset is one YAML file with the sections `model`, `task`, `sft`, `rm`, `train`, `eval` plus
`name`, `description` and `seed`. Every field is declared here with its type, a one-line doc
(``doc``) and its constraints (``choices``, ``gt``, ``ge``, ``lt``, ``le``); unknown keys are
errors. Loading, overrides and cross-field checks live in `config.loader`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

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
    save: str = F("merged", doc="final/ holds 'merged' weights (plain from_pretrained) or the 'adapter' only (adapter_model.safetensors + adapter_config.json for peft; the base is named in lco_stage.json).",
                  choices=("merged", "adapter"))


@dataclass
class VLLMConfig:
    """The vLLM engine (`train.rollout.engine: vllm`, `eval.engine: vllm`; GPU only, optional extra)."""

    tensor_parallel_size: int = F(1, doc="GPUs one vLLM engine shards the model over: that many training processes form one colocated vLLM group (must divide the process count).", gt=0)
    gpu_memory_utilization: float = F(0.3, doc="Fraction of GPU memory vLLM may take (weights + KV cache); the rest is the trainer's.", gt=0, le=1)
    sleep_mode: bool = F(True, doc="In train, free vLLM's weights and KV cache between rollouts (LLM.sleep(level=2)); wake_up brings them back before the weight push and the next rollout.")


@dataclass
class ModelConfig:
    """The initial policy and how models are loaded."""

    policy: str = F("tiny", doc="Hub id, local path, built-in spec 'tiny' / 'tiny:hidden=128,layers=4,heads=4', or 'random:ARCH' (a randomly initialised real-size model for benchmarks only; ARCH: qwen2.5-3b, qwen2.5-7b, qwen3-4b, qwen3-8b, llama3.2-3b, llama3.1-8b).")
    dtype: str = F("auto", doc="Weights dtype. 'auto': frozen models (reference, φ_DPO, φ_ref) in bfloat16 where CUDA supports it, else float32; trained models keep float32 master weights (use the stage's mixed_precision: bf16 for bf16 compute). An explicit dtype applies to every model.",
                   choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = F(False, doc="Allow custom model code from the hub (off unless you trust it).")
    attn_implementation: Optional[str] = F(None, doc="Attention kernel passed to from_pretrained (e.g. 'sdpa', 'flash_attention_2').")
    gradient_checkpointing: bool = F(False, doc="Recompute activations in backward to save memory.")
    lora: LoraConfig = F(doc="LoRA settings.", factory=LoraConfig)
    vllm: VLLMConfig = F(doc="vLLM engine settings.", factory=VLLMConfig)


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
    engine: str = F("hf", doc="Generation engine: 'hf' (transformers generate) or 'vllm' (GPU, optional extra; settings in model.vllm).", choices=("hf", "vllm"))
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
