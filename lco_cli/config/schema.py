"""The preset schema: one typed dataclass per section, a one-line doc and checks per field (README, docs/presets.md).

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


def algo_names() -> tuple[str, ...]:
    """The registered `train.algo`s (imports the algorithms only when a preset is checked)."""
    from lco_cli.rl.registry import algorithms

    return tuple(algorithms())


class RegisteredBenchmarks:
    """The benchmark names `eval.benchmarks` accepts: `task` (the configured task's held-out split;
    `arith` is its name for the arith task) plus every
    benchmark in the registry (`lco_cli.evals.benchmarks`), read lazily on first use so that
    importing the schema never imports the evaluation code."""

    def _names(self) -> tuple[str, ...]:
        from lco_cli.evals.benchmarks import benchmark_names

        return ("task", "arith", *benchmark_names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


BENCHMARK_NAMES = RegisteredBenchmarks()
DEFAULT_PRESET = "tiny"


def F(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = None, **checks: Any):
    """A dataclass field with a one-line doc and optional checks (choices/gt/ge/le).

    ``operational=True`` marks a key that changes how a stage runs (checkpoints, logs, request
    concurrency) but no number it produces: it is left out of the stage's identity, so changing it
    never refuses or reruns a finished stage (`runtime.stage.stage_inputs`)."""
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
    """Where prompts, reference solutions and verdicts come from (docs/tasks.md): train prompts for sft/rm/train, the held-out split."""

    name: str = F("arith", doc="A registered task (arith, math, prompts) or your own Task subclass as 'package.module:ClassName' (imported only when named).")
    source: Optional[str] = F(None, doc="math/prompts: a JSON/JSONL/parquet file, a folder of them, or a hub dataset id (math default: DigitalLearningGmbH/MATH-lighteval, the 7,500-problem MATH training set; 'tiny-math': the generated stand-in).")
    split: str = F("train", doc="Split of a hub dataset source.")
    prompt_field: Optional[str] = F(None, doc="Field holding the prompt (null = the task's default: math 'problem', prompts 'instruction' or a 'messages' list).")
    answer_field: Optional[str] = F(None, doc="math: field holding the reference answer (null = the last \\boxed{} of 'solution', MATH schema).")
    response_field: Optional[str] = F(None, doc="prompts: field holding an SFT reference response (null = none).")
    n_test: int = F(400, doc="Held-out examples (never trained on; paper §5: 500).", ge=1)
    split_seed: int = F(0, doc="Seed of the held-out split (and arith's slips), separate from `seed` so every seed of a study shares one split.", ge=0)
    limit: Optional[int] = F(None, doc="Use at most the first N rows of the source (before the split).", gt=0)
    op: str = F("mul", doc="arith only: arithmetic operation.", choices=("add", "mul"))
    digits: int = F(2, doc="arith only: digits per operand.", ge=1, le=6)
    slip_rate: float = F(0.0, doc="arith only: probability that an SFT demonstration is written with the carry slip (every column added without carrying, 57+68=15; problems without a carry are unaffected; add only): an imperfect teacher for RL to correct.", ge=0, le=1)


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
class SupervisedLoopConfig:
    """What the two supervised stages (sft, rm) share: sequence length, clipping, precision, checkpoints, logging."""

    max_length: int = F(512, doc="Truncate prompt+response to this many tokens.", gt=1)
    max_grad_norm: float = F(1.0, doc="Gradient clipping norm (0 disables).", ge=0)
    mixed_precision: str = F("no", doc="accelerate mixed precision.", choices=("no", "bf16", "fp16"))
    checkpoint_every: int = F(200, doc="Save a resumable checkpoint every N steps.", gt=0, operational=True)
    checkpoint_every_minutes: Optional[float] = F(None, doc="Also save one when this many minutes passed since the last (slow steps, preemptible jobs).", gt=0,
                                                    operational=True)
    keep_checkpoints: int = F(2, doc="Keep the newest N checkpoints.", gt=0, operational=True)
    log_every: int = F(10, doc="Write a metrics row every N steps.", gt=0, operational=True)


@dataclass
class SFTConfig(SupervisedLoopConfig):
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
    eval_problems: int = F(200, doc="Held-out problems for the greedy accuracy in sft/eval.json (verifiable tasks).", ge=0)


@dataclass
class PairsConfig:
    """Preference pairs for the DPO reward model."""

    source: str = F("self", doc="'self' (sample + verify), 'file' (local JSON/JSONL) or 'hub' (dataset id).", choices=("self", "file", "hub"))
    path: Optional[str] = F(None, doc="File path or hub id for source file/hub.")
    split: str = F("train", doc="Split for hub datasets.")
    sampler: Union[str, list[str]] = F("init", doc="Model(s) that sample responses for 'self': 'init' (rm.init_from), a stage name, a path or hub id, or a list of them (the paper samples from several larger models).")
    n_prompts: int = F(512, doc="Task prompts to sample for 'self'.", gt=0)
    samples_per_prompt: int = F(8, doc="Responses sampled per prompt for 'self'.", ge=2)
    temperature: float = F(1.0, doc="Sampling temperature for 'self'.", gt=0)
    top_p: float = F(1.0, doc="Nucleus sampling for 'self'.", gt=0, le=1)
    max_new_tokens: Optional[int] = F(None, doc="Response length cap for 'self'; null = the task's budget (arith 16, math 2,048).", gt=0)
    max_pairs_per_prompt: int = F(4, doc="At most this many (chosen, rejected) pairs per prompt.", gt=0)
    max_pairs: int = F(4096, doc="Cap on the total number of pairs.", gt=0)
    eval_fraction: float = F(0.1, doc="Fraction of prompts held out for rm/eval.json.", ge=0, lt=1)
    limit: Optional[int] = F(None, doc="Use at most this many rows from file/hub.", gt=0)


@dataclass
class RMConfig(SupervisedLoopConfig):
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
    pairs: PairsConfig = F(doc="Preference pairs.", factory=PairsConfig)


@dataclass
class RolloutConfig:
    """How rollouts are sampled."""

    engine: str = F("hf", doc="'hf' (transformers generate, CPU/GPU) or 'vllm' (GPU, optional extra).", choices=("hf", "vllm"))
    temperature: float = F(0.6, doc="Sampling temperature (paper: 0.6).", gt=0)
    top_p: float = F(0.95, doc="Nucleus sampling (paper: 0.95).", gt=0, le=1)
    max_new_tokens: Optional[int] = F(None, doc="Response length cap (truncated responses are flagged); null = the task's budget (arith 16, math 2,048 as the paper).", gt=0)
    batch_size: int = F(256, doc="Sequences generated per generate() call.", gt=0)


@dataclass
class TelemetryConfig:
    """Diagnostics for the paper's figures (cost extra compute)."""

    split_grad_norm: bool = F(False, doc="Log grad_norm_pos/neg and logit_grad_sampled/other (a second backward).")
    every: int = F(1, doc="Compute the split telemetry every N steps.", gt=0)
    kl_ref: bool = F(True, doc="Log kl_ref, the k3 estimate of KL(π_old‖π_ref) per token. Where no loss term needs the "
                     "reference policy (dapo, gspo, reinforce, grpo with beta 0, lco, gkd, minillm) false loads no "
                     "reference model and skips its forward pass, as TRL does with beta 0.")
    gradient_gap: int = F(0, doc="Every N steps, the RLVR Gradient Gap telemetry (gap_* metrics, docs/stability.md): g+ and g- "
                          "at the pre-update policy (two extra forward+backward passes over the rollout batch), the update "
                          "taken on the batch (eta, alignment, cos), M(K), the J bound and the step-size gauge; two "
                          "float32 buffers the size of the trainable parameters. 0 = off.", ge=0)


@dataclass
class GuardConfig:
    """The collapse guard: stop a collapsed run with exit 1 (the stage is not marked done; docs/stability.md)."""

    enabled: bool = F(True, doc="Stop the run when one of the symptoms below is seen.")
    patience: int = F(3, doc="Consecutive steps a gradient norm of exactly 0 (or non-finite), or uniform outputs, must last.", gt=0)
    uniform_entropy: float = F(0.98, doc="Uniform outputs: mean token entropy at least this fraction of ln|V| (only when "
                               "the run started below it).", gt=0, le=1)
    heldout_fraction: float = F(0.5, doc="Held-out greedy accuracy below this fraction of its step-0 value ...", gt=0, le=1)
    heldout_sigmas: float = F(2.0, doc="... and lower by more than this many standard errors of the difference.", ge=0)


@dataclass
class TrainConfig:
    """Policy optimisation: LCO objectives and the baselines, on the same rollouts."""

    init_from: str = F("sft", doc="Initial policy: stage name, path or hub id.")
    algo: str = F("lco", doc="Algorithm (the registry in lco_cli.rl; see docs/architecture.md to add one).", choices=algo_names)
    objective: str = F("kld", doc="LCO objective (eqs. 8-10).", choices=("kld", "mse", "lch"))
    advantage: str = F("dpo", doc="Advantage estimator for LCO (eqs. 11-13).", choices=("dpo", "logprob", "sparse"))
    advantage_model: Optional[str] = F(None, doc="φ for advantage=logprob (default: the rm stage's model).")
    reward: str = F("verifier", doc="Sequence reward for sparse advantages and the PG baselines: 'verifier' (the task's, ±1), 'rm' (the DPO RM's implicit reward) or a function 'my_pkg.rewards:score' of (prompt, completion, row) (docs/tasks.md).")
    log_rollouts: Optional[int] = F(None, doc="Rollouts per logged step written to train/rollouts.jsonl (prompt as fed to the model, completion, reward, verdict); null = all, 0 = off.", ge=0, operational=True)
    advantage_norm: str = F("group", doc="Normalisation of sequence advantages.", choices=("none", "batch", "group"))
    advantage_center: bool = F(True, doc="Center dense advantages over the vocabulary per token (paper §4.4).")
    advantage_clip: Optional[float] = F(None, doc="Clip dense advantages to ±value (off by default).", gt=0)
    advantage_support: str = F("vocab", doc="Support of dense advantages: 'vocab' (paper), 'policy_topk' (k likeliest behaviour tokens, A centred there, z* = z_old elsewhere), 'authors' (homzer/llama-rlhf: behaviour top-k, A standardised there, MSE/LCH on it only, π* ~0 off it).", choices=("vocab", "policy_topk", "authors"))
    advantage_topk: Optional[int] = F(None, doc="k of advantage_support 'policy_topk' / 'authors' (the authors' logits_topk default: 5).", gt=0)
    beta: float = F(1.0, doc="β of the KL-regularised objective (paper: 1.0).", gt=0)
    beta_neg: Optional[float] = F(None, doc="β for tokens whose sampled-token advantage is negative (default: beta).", gt=0)
    steps: int = F(100, doc="Optimizer steps (each on a fresh rollout batch).", gt=0)
    batch_size: int = F(32, doc="Prompts per step.", gt=0)
    samples_per_prompt: Optional[int] = F(None, doc="Responses per prompt (null: the algorithm's default - 4 for grpo/dapo/gspo, 1 for the others, paper §5).", gt=0)
    micro_batch_size: int = F(64, doc="Sequences per forward pass on one process.", gt=0)
    update_epochs: Optional[int] = F(None, doc="Passes over each rollout batch, behaviour logits frozen (null: the algorithm's default - lco 1, ppo 4 as TRL, others 1).", gt=0)
    minibatches: Optional[int] = F(None, doc="Optimizer steps per rollout batch and epoch (null: the algorithm's default - lco 4, others 1; docs/compare.md).", gt=0)
    lr: float = F(5e-6, doc="Peak learning rate (paper: 5e-6 for LCO).", gt=0)
    weight_decay: float = F(0.0, doc="AdamW weight decay.", ge=0)
    warmup_steps: int = F(0, doc="Linear warmup steps, then constant.", ge=0)
    max_grad_norm: float = F(1.0, doc="Gradient clipping norm (0 disables).", ge=0)
    loss_chunk_size: int = F(512, doc="Tokens per chunk of the full-vocabulary loss engine.", gt=0)
    mixed_precision: str = F("no", doc="accelerate mixed precision.", choices=("no", "bf16", "fp16"))
    eval_every: int = F(25, doc="Held-out greedy accuracy every N steps (0 disables).", ge=0)
    eval_problems: int = F(200, doc="Held-out problems for that accuracy.", ge=0)
    checkpoint_every: int = F(50, doc="Save a resumable checkpoint every N steps.", gt=0, operational=True)
    checkpoint_every_minutes: Optional[float] = F(None, doc="Also save one when this many minutes passed since the last (slow steps, preemptible jobs).", gt=0,
                                                    operational=True)
    keep_checkpoints: int = F(2, doc="Keep the newest N checkpoints.", gt=0, operational=True)
    log_every: int = F(1, doc="Write a metrics row every N steps.", gt=0, operational=True)
    max_skipped: int = F(5, doc="Fail the stage after this many consecutive non-finite steps.", gt=0)
    rollout: RolloutConfig = F(doc="Rollout sampling.", factory=RolloutConfig)
    telemetry: TelemetryConfig = F(doc="Diagnostics.", factory=TelemetryConfig)
    guard: GuardConfig = F(doc="The collapse guard.", factory=GuardConfig)
    algo_args: dict[str, Any] = F(doc="Knobs of the chosen baseline algorithm (see docs/presets.md).", factory=dict)


@dataclass
class JudgeConfig:
    """The OpenAI-compatible chat-completions endpoint that judges AlpacaEval 2.0 pairs."""

    base_url: str = F("https://api.openai.com/v1", doc="Endpoint root; requests go to <base_url>/chat/completions.")
    model: str = F("gpt-4o-2024-11-20", doc="Judge model (paper: GPT-4o, gpt-4o-2024-11-20).")
    api_key_env: str = F("OPENAI_API_KEY", doc="Name of the environment variable holding the API key (the key itself is never written).")
    concurrency: int = F(8, doc="Judge requests in flight at once.", gt=0, operational=True)
    max_retries: int = F(3, doc="Retries of a failed request (HTTP 429/5xx, timeout, connection error).", ge=0)
    backoff: float = F(2.0, doc="Seconds before the first retry; doubles each retry.", ge=0)
    timeout: float = F(60.0, doc="Seconds per request before it counts as failed.", gt=0)
    lc_data: str = F("tatsu-lab/alpaca_eval", doc="df_gamed.csv for the length-controlled win rate: hub dataset id or a local file.")


@dataclass
class QAFeedbackConfig:
    """Wu et al. (2023)'s three fine-grained reward models for the `qa_feedback` benchmark."""

    relevance_model: Optional[str] = F(None, doc="Token classifier scoring sub-sentences (path or hub id).")
    factuality_model: Optional[str] = F(None, doc="Token classifier scoring sentences (path or hub id).")
    completeness_model: Optional[str] = F(None, doc="Sequence regressor scoring the whole response (path or hub id).")
    sep: str = F("</s>", doc="Separator token placed before each (sub-)sentence, as in their code.")
    batch_size: int = F(16, doc="Responses per reward-model forward pass.", gt=0)


@dataclass
class EvalConfig:
    """Benchmark evaluation: pass@1 ± stderr over k samples per problem (math), AlpacaEval 2.0 win
    rates, reward-model scores, MMLU accuracy (docs/evaluations.md)."""

    policies: list[str] = F(doc="Stage names, 'base', 'pi_star', 'rm', paths or hub ids.", factory=lambda: ["sft", "train"])
    engine: str = F("hf", doc="Generation engine: 'hf' (transformers generate) or 'vllm' (GPU, optional extra; settings in model.vllm).", choices=("hf", "vllm"))
    benchmarks: list[str] = F(doc="Benchmark names ('task' = the configured task's held-out split; 'arith' is its name for the arith task).", factory=lambda: ["task"], choices=BENCHMARK_NAMES)
    samples: int = F(4, doc="k samples per problem (pass@1 benchmarks; the others take one response per prompt).", ge=1)
    temperature: float = F(0.6, doc="Sampling temperature (0 = greedy; paper: 0.6).", ge=0)
    top_p: float = F(0.95, doc="Nucleus sampling (paper: 0.95).", gt=0, le=1)
    max_new_tokens: Optional[int] = F(None, doc="Generation length cap; null = the task's budget (arith 16, math 2,048).", gt=0)
    batch_size: int = F(256, doc="Sequences per generate() call.", gt=0)
    limit: Optional[int] = F(None, doc="Evaluate at most this many problems per benchmark.", gt=0)
    data: dict[str, str] = F(doc="Local files per benchmark name (same schema as the hub dataset).", factory=dict)
    verify_timeout: float = F(5.0, doc="Seconds per answer check before it counts as wrong.", gt=0)
    checkpoint_every_minutes: Optional[float] = F(None, doc="Also save the finished problems of the benchmark being generated when this many minutes passed since the last save; a resumed eval continues from them (long benchmarks, preemptible jobs).", gt=0, operational=True)
    judge: JudgeConfig = F(doc="AlpacaEval 2.0 judge endpoint.", factory=JudgeConfig)
    reward_models: dict[str, str] = F(doc="Sequence-classification reward models for the `reward` benchmark: {name: path or hub id}.", factory=dict)
    qa_feedback: QAFeedbackConfig = F(doc="The `qa_feedback` benchmark's reward models.", factory=QAFeedbackConfig)


@dataclass
class LoggingConfig:
    """Where metrics go besides metrics.jsonl, and when a run that looks collapsed gets a warning."""

    report_to: list[str] = F(doc="Experiment trackers fed every metrics row (accelerate's TensorBoard / W&B trackers).",
                             factory=list, choices=("tensorboard", "wandb"))
    divergence_window: int = F(3, doc="Warn when grad_norm is exactly 0, or entropy is below entropy_floor, for this many consecutive logged steps.", gt=0, le=1000)
    entropy_floor: float = F(1e-3, doc="Mean token entropy (nats) below which the policy counts as collapsed.", ge=0)


@dataclass
class Preset:
    """A whole pipeline."""

    name: str = F("tiny", doc="Run name (default run dir: runs/<name>).")
    description: str = F("", doc="One-line description shown by `lco presets`.")
    seed: int = F(0, doc="Global seed.", ge=0)
    model: ModelConfig = F(doc="Models.", factory=ModelConfig)
    task: TaskConfig = F(doc="The task.", factory=TaskConfig)
    sft: SFTConfig = F(doc="SFT stage.", factory=SFTConfig)
    rm: RMConfig = F(doc="Reward-model stage.", factory=RMConfig)
    train: TrainConfig = F(doc="Policy-training stage.", factory=TrainConfig)
    eval: EvalConfig = F(doc="Evaluation stage.", factory=EvalConfig)
    logging: LoggingConfig = F(doc="Trackers and divergence warnings (not part of any stage's identity).", factory=LoggingConfig)
