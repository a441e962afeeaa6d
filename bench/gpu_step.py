"""One training step of each method at the paper's sizes, on one GPU: time, peak memory, tokens/s, MFU.

The paper trains 3-4B policies against 7-8B DPO reward models on 2,048-token sequences. This script
builds a Qwen2.5-3B-sized policy (and its frozen reference) and Qwen2.5-7B-sized φ_DPO / φ_ref with
random weights (`lco_cli.runtime.architectures`; no downloads), one synthetic rollout batch of
full-length sequences, and times the update step of `lco train` — `Update.prepare` (behaviour,
reference and RM passes) plus the optimizer step over micro-batches, through the same `Update`
classes the CLI runs — for

    lco_dense   LCO-KLD, dense DPO advantage (eq. 13) over the full vocabulary
    lco_topk    LCO-KLD, DPO advantage on the behaviour policy's top-64 tokens
    lco_sparse  LCO-KLD, sparse sequence advantage (eq. 11) from the RM's sequence reward
    grpo        GRPO (clip, k3 KL to the reference), group-normalised RM reward
    ppo         PPO with a value model (its own optimizer) and the RM's token rewards

on the same batch. Rollout generation is not part of the step (it is the same for every method).

Reported per method: step time (after one warm-up step), peak GPU memory (`max_memory_allocated`,
models included), response tokens per second, and model FLOPs utilisation: every decoder forward
is counted by a hook, at 2·params·tokens without gradients and 6·params·tokens with them (params =
non-embedding weights + the [V, H] head), divided by the step time and the GPU's peak bf16 rate.

    python bench/gpu_step.py --out bench_out                 # one GPU, bf16, the sizes above (< 8 min on an H200)
    python bench/gpu_step.py --tiny --out /tmp/gpu_step      # CPU, tiny models: checks the script (seconds)

Writes `gpu_step.json` and `gpu_step.md` into --out.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

METHODS = {
    "lco_dense": {"algo": "lco", "objective": "kld", "advantage": "dpo"},
    "lco_topk": {"algo": "lco", "objective": "kld", "advantage": "dpo", "advantage_topk": 64},
    "lco_sparse": {"algo": "lco", "objective": "kld", "advantage": "sparse", "reward": "rm"},
    "grpo": {"algo": "grpo", "reward": "rm"},
    "ppo": {"algo": "ppo", "reward": "rm"},
}
# Peak dense bf16 tensor-core rate (TFLOP/s) by device-name substring, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
TINY_ARCH = {"model_type": "qwen2", "params": 0.0, "config": {
    "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True}}
TINY_RM_ARCH = {"model_type": "qwen2", "params": 0.0, "config": {
    **TINY_ARCH["config"], "hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2,
    "tie_word_embeddings": False}}


@dataclass
class Setup:
    policy: str = "qwen2.5-3b"
    rm: str = "qwen2.5-7b"
    prompts: int = 4
    samples: int = 2            # responses per prompt (GRPO's groups)
    seq_len: int = 2048
    prompt_len: int = 256
    micro_batch: int = 1
    chunk_size: int = 512
    gradient_checkpointing: bool = True
    dtype: str = "bfloat16"
    device: str = "cuda"
    methods: list[str] = field(default_factory=lambda: list(METHODS))


@dataclass
class Row:
    method: str
    step_time_s: float
    peak_mem_gib: float | None
    tokens: int
    tokens_per_s: float
    model_tflop: float
    mfu: float | None
    passes: dict


# --------------------------------------------------------------------------- models and batch


def build_models(setup: Setup, tmp: Path):
    """Policy (trainable, saved once for PPO's value-model init), its frozen reference, φ_DPO, φ_ref."""
    from lco_cli.config import ModelConfig
    from lco_cli.rl.advantage_sources import DPOReward
    from lco_cli.rl.update import HiddenStatesLM
    from lco_cli.runtime import models
    from lco_cli.runtime.architectures import ARCHITECTURES, build_random_model

    dtype = getattr(torch, setup.dtype)
    policy_lm, tok = build_random_model(setup.policy, seed=0, dtype=dtype, device=setup.device)
    vocab = policy_lm.config.vocab_size
    # φ_DPO/φ_ref must share the policy's vocabulary for token-level advantages; Qwen2.5-7B pads its
    # embedding to 152,064 rows where 3B has 151,936 (same tokenizer): use the policy's row count.
    rm_arch = dict(ARCHITECTURES[setup.rm], config={**ARCHITECTURES[setup.rm]["config"], "vocab_size": vocab})
    ARCHITECTURES[f"{setup.rm}@policy-vocab"] = rm_arch
    rm_lm, _ = build_random_model(f"{setup.rm}@policy-vocab", seed=1, dtype=dtype, device=setup.device)
    ref_lm, _ = build_random_model(f"{setup.rm}@policy-vocab", seed=2, dtype=dtype, device=setup.device)
    for m in (rm_lm, ref_lm):
        m.eval().requires_grad_(False)
    init_dir = tmp / "policy"
    policy_lm.save_pretrained(init_dir, safe_serialization=True)
    tok.save_pretrained(init_dir)
    model_cfg = ModelConfig(policy=str(init_dir), dtype=setup.dtype, gradient_checkpointing=setup.gradient_checkpointing)
    if setup.gradient_checkpointing:
        models.enable_checkpointing(policy_lm)
    reference = HiddenStatesLM(models.load_model(str(init_dir), model_cfg, trainable=False).to(setup.device))
    # DPOReward without its folder: the same object the train stage builds from rm/final, with the
    # models assigned directly (writing 2 × 15 GB to disk only to read it back would dominate the run).
    reward = DPOReward.from_models(rm_lm, ref_lm, tok)
    return policy_lm, reference, reward, tok, init_dir, model_cfg


def rollout_batch(setup: Setup, vocab: int, pad_id: int):
    """Full-length sequences (prompt_len prompt + the rest response, no EOS), groups of `samples`."""
    from lco_cli.engines.generation import Rollouts
    from lco_cli.rl.rollout import from_rollouts

    g = torch.Generator().manual_seed(0)
    resp_len = setup.seq_len - setup.prompt_len
    roll = Rollouts([], [], [], [], [])
    for p in range(setup.prompts):
        prompt = torch.randint(0, vocab, (setup.prompt_len,), generator=g).tolist()
        for _ in range(setup.samples):
            roll.prompt_ids.append(prompt)
            roll.response_ids.append(torch.randint(0, vocab, (resp_len,), generator=g).tolist())
            roll.texts.append("")
            roll.truncated.append(True)
            roll.group.append(p)
    return from_rollouts(roll, pad_id, [False] * len(roll)).to(setup.device)


# --------------------------------------------------------------------------- FLOP counting


class PassCounter:
    """Counts decoder forwards per model (tokens, with/without grad) through forward hooks."""

    def __init__(self):
        self.flop = 0.0
        self.passes: dict[str, int] = {}
        self.handles = []

    def watch(self, name: str, lm, head_params: int | None = None) -> None:
        decoder = getattr(lm, lm.base_model_prefix)
        n = sum(p.numel() for pn, p in decoder.named_parameters() if "embed_tokens" not in pn)
        n += head_params if head_params is not None else lm.config.vocab_size * lm.config.hidden_size

        def hook(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.flop += (6 if torch.is_grad_enabled() else 2) * n * ids.numel()
            key = f"{name}{'' if torch.is_grad_enabled() else ' (no grad)'}"
            self.passes[key] = self.passes.get(key, 0) + 1

        self.handles.append(decoder.register_forward_pre_hook(hook, with_kwargs=True))

    def reset(self) -> None:
        self.flop, self.passes = 0.0, {}

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- one method


def train_config(setup: Setup, method: str):
    from lco_cli.config import TrainConfig

    return TrainConfig(**{**METHODS[method], "batch_size": setup.prompts, "samples_per_prompt": setup.samples,
                          "micro_batch_size": setup.micro_batch, "loss_chunk_size": setup.chunk_size, "lr": 1e-6})


def step(update, batch, cfg, opt, acc) -> None:
    """One rollout batch's update as `lco train` does it with update_epochs = minibatches = 1."""
    from lco_cli.rl.update import MicroBatch, Normaliser, row_chunks

    prep, _ = update.prepare(batch)
    norm = Normaliser(global_tokens=float(batch.response_len.sum()), global_seqs=float(batch.size), world=1)
    for mrows in row_chunks(batch.size, cfg.micro_batch_size):
        view = MicroBatch.of(batch, mrows)
        loss, _ = update.micro_loss(batch, view, prep.take(view), norm, part="all", stats=False)
        acc.backward(loss)
    torch.nn.utils.clip_grad_norm_([p for p in update.env.policy.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    update.aux_step()


def run_method(method, setup, policy_lm, reference, reward, tok, init_dir, model_cfg, base_batch, counter, acc) -> Row:
    from lco_cli.rl.registry import update_class
    from lco_cli.rl.update import HiddenStatesLM, TrainEnv
    from lco_cli.runtime.training import make_optimizer

    cfg = train_config(setup, method)
    policy = HiddenStatesLM(policy_lm)
    opt = make_optimizer(policy, cfg.lr, cfg.weight_decay)
    env = TrainEnv(cfg, policy, reference, reward, acc, cfg.loss_chunk_size, init_from=str(init_dir), model_cfg=model_cfg)
    update = update_class(cfg.algo)(cfg, env)
    if hasattr(update, "value"):  # PPO's value model: its decoder passes count too (head: H → 1)
        value_lm = acc.unwrap_model(update.value).body.lm
        counter.watch("value", value_lm, head_params=value_lm.config.hidden_size)

    def fresh_batch():
        batch = base_batch.subset(list(range(base_batch.size))).to(setup.device)
        batch.rewards = reward.sequence_rewards(batch.input_ids, batch.attention_mask, batch.targets).float()
        return batch

    step(update, fresh_batch(), cfg, opt, acc)  # warm-up (kernels, allocator, lazy state)
    batch = fresh_batch()
    sync = torch.cuda.synchronize if setup.device == "cuda" else (lambda: None)
    if setup.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    counter.reset()
    t0 = time.perf_counter()
    step(update, batch, cfg, opt, acc)
    sync()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 1024**3 if setup.device == "cuda" else None
    tokens = int(batch.response_len.sum())
    peak_rate = next((v for k, v in PEAK_BF16_TFLOPS.items() if setup.device == "cuda" and k in torch.cuda.get_device_name()), None)
    row = Row(method, elapsed, peak, tokens, tokens / elapsed, counter.flop / 1e12,
              counter.flop / elapsed / (peak_rate * 1e12) if peak_rate else None, dict(counter.passes))
    del update, opt, env
    if setup.device == "cuda":
        torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------- report


def markdown(rows: list[Row], setup: Setup, machine: str) -> str:
    lines = [f"Machine: {machine}. Policy `random:{setup.policy}`, φ_DPO/φ_ref `random:{setup.rm}`, {setup.dtype}, "
             f"{setup.prompts}×{setup.samples} sequences of {setup.seq_len} tokens ({setup.prompt_len} prompt), "
             f"micro-batch {setup.micro_batch}, gradient checkpointing {'on' if setup.gradient_checkpointing else 'off'}.",
             "", "| method | step time (s) | peak memory (GiB) | response tokens/s | model TFLOP | MFU | decoder passes |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        passes = ", ".join(f"{k} ×{v}" for k, v in sorted(r.passes.items()))
        peak = f"{r.peak_mem_gib:.1f}" if r.peak_mem_gib is not None else "n/a (CPU)"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
        lines.append(f"| {r.method} | {r.step_time_s:.2f} | {peak} | {r.tokens_per_s:.0f} | {r.model_tflop:.3g} | {mfu} | {passes} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (checks the script)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--prompts", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--out", default="bench_out", help="folder for gpu_step.json and gpu_step.md")
    return p.parse_args(argv)


def make_setup(args) -> Setup:
    if args.tiny:
        from lco_cli.runtime.architectures import ARCHITECTURES

        ARCHITECTURES.setdefault("bench-tiny", TINY_ARCH)
        ARCHITECTURES.setdefault("bench-tiny-rm", TINY_RM_ARCH)
        setup = Setup(policy="bench-tiny", rm="bench-tiny-rm", prompts=2, samples=2, seq_len=48, prompt_len=16, micro_batch=2,
                      chunk_size=32, dtype="float32", device="cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu_step.py: no GPU here; run with --tiny on the CPU")
        setup = Setup()
    for key in ("prompts", "samples", "seq_len", "micro_batch"):
        if getattr(args, key) is not None:
            setattr(setup, key, getattr(args, key))
    setup.gradient_checkpointing = setup.gradient_checkpointing and not args.no_gradient_checkpointing
    setup.methods = [m for m in args.methods.split(",") if m]
    unknown = set(setup.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods: {sorted(unknown)} (known: {', '.join(METHODS)})")
    return setup


def main(argv=None) -> int:
    import tempfile

    from lco_cli.runtime.training import make_accelerator

    args = parse_args(argv)
    setup = make_setup(args)
    acc = make_accelerator("no", 0)  # weights already in setup.dtype: no autocast
    machine = torch.cuda.get_device_name() if setup.device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lco-gpu-step-") as tmp:
        policy_lm, reference, reward, tok, init_dir, model_cfg = build_models(setup, Path(tmp))
        policy_lm.train()
        counter = PassCounter()
        counter.watch("policy", policy_lm)
        counter.watch("reference", reference.lm)
        counter.watch("rm", reward.rm)
        counter.watch("rm_ref", reward.ref)
        batch = rollout_batch(setup, policy_lm.config.vocab_size, tok.pad_token_id)
        rows = []
        for method in setup.methods:
            rows.append(run_method(method, setup, policy_lm, reference, reward, tok, init_dir, model_cfg, batch, counter, acc))
            print(f"[gpu_step] {method}: {rows[-1].step_time_s:.2f}s", file=sys.stderr, flush=True)
        counter.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine, "setup": asdict(setup), "torch": torch.__version__, "wall_s": time.perf_counter() - t_start}
    (out / "gpu_step.json").write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    (out / "gpu_step.md").write_text(markdown(rows, setup, machine))
    print(markdown(rows, setup, machine))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
