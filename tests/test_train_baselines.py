"""Every baseline as a `train.algo` of the same `lco train` loop, through the real CLI on a tiny model:
files and parameter updates, each method's diagnostics, PPO's value model (trains, checkpoints,
resumes), DAPO's dynamic sampling (refill, skip), GKD/MiniLLM through the chunked full-vocabulary
engine, teacher-mixed sampling, and the loss normalisation over micro-batches / telemetry parts."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import FAST, free_port, invoke, read_jsonl
from safetensors.torch import load_file

COMMON = {"step", "loss", "grad_norm", "lr", "reward_mean", "reward_std", "entropy", "sampled_prob", "kl_ref",
          "response_len", "truncated_frac", "tokens_per_s", "skipped_steps", "rollout_samples", "rollout_samples_total"}
CLIP = {"clipfrac", "clipfrac_low", "clipfrac_high", "ratio_mean", "ratio_min", "ratio_max", "approx_kl"}
DIAGNOSTICS = {
    "reinforce": {"adv_mean", "advantage_mean", "advantage_pos_frac"},
    "ppo": CLIP | {"value_loss", "value_clipfrac", "explained_variance", "value_grad_norm", "pg_loss", "kl_term",
                   "dense_reward_mean", "kl_penalty_mean", "value_mean"},
    "grpo": CLIP | {"kl_term", "advantage_mean"},
    "dapo": CLIP | {"dropped_groups", "kept_groups", "gen_batches", "overlong_penalty_mean"},
    "gspo": CLIP | {"advantage_mean"},
    "gkd": {"distill_jsd", "gkd_on_policy", "logit_grad_sampled", "logit_grad_other"},
    "minillm": CLIP | {"pg_loss", "single_step_kl", "mix_weight_mean", "teacher_logprob_mean", "logit_grad_sampled"},
}


def train(runner, *overrides, run="run"):
    return invoke(runner, "train", "fast.yaml", "--run-dir", run, "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl",
                  "train.eval_every=0", *overrides)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("algo", sorted(DIAGNOSTICS))
def test_every_baseline_trains_in_the_loop(runner, run_dir, algo):
    # RM rewards (the untrained policy is never right, so verifier rewards would all be equal);
    # 2 epochs × 2 minibatches so the ratios move away from 1 and the clip statistics mean something.
    res = train(runner, f"train.algo={algo}", "train.steps=2", "train.reward=rm", "train.update_epochs=2", "train.minibatches=2")
    assert res.exit_code == 0, res.output
    st = run_dir / "train"
    assert {"status.json", "config.yaml", "metrics.jsonl", "final", "eval.json"} <= {p.name for p in st.iterdir()}
    assert json.loads((st / "status.json").read_text())["state"] == "done"
    assert json.loads((st / "final/lco_stage.json").read_text())["algo"] == algo
    rows = read_jsonl(st / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        missing = (COMMON | DIAGNOSTICS[algo]) - set(row)
        assert not missing, f"{algo}: missing {missing}"
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
    assert changed(weights(run_dir / "sft/final"), weights(st / "final")), "parameters did not change"
    if algo in ("ppo", "grpo", "dapo", "minillm"):  # several optimizer steps per batch: the ratio left 1
        assert any(r["ratio_max"] > 1 or r["ratio_min"] < 1 for r in rows)
    if algo == "gkd":  # λ = 0.5 coin per step (seeded): step 1 on-policy, step 2 the dataset answers
        assert [r["gkd_on_policy"] for r in rows] == [1.0, 0.0]
        assert rows[1]["accuracy"] == 1.0 and rows[1]["rollout_samples"] == 0


def test_ppo_value_model_trains_checkpoints_and_resumes(runner, run_dir, workdir, monkeypatch):
    shutil.copytree(run_dir, workdir / "run_full")
    args = ["train.algo=ppo", "train.reward=verifier", "train.steps=4", "train.checkpoint_every=2", "train.update_epochs=2",
            "train.algo_args.value_lr=3e-3"]
    res = train(runner, *args, run="run_full")
    assert res.exit_code == 0, res.output
    rows = read_jsonl(workdir / "run_full/train/metrics.jsonl")
    assert all(math.isfinite(r["value_loss"]) and "explained_variance" in r and r["value_grad_norm"] > 0 for r in rows)
    # The value model (checkpointed next to the policy) moved away from the initial policy's weights.
    value = load_file(str(workdir / "run_full/train/checkpoints/step-000002/model_1.safetensors"))
    sft = weights(run_dir / "sft/final")
    body = {k.split("body.lm.", 1)[1]: v for k, v in value.items() if k.startswith("body.lm.")}
    shared = [k for k in body if k in sft]
    assert shared and any(not torch.equal(body[k], sft[k]) for k in shared)
    assert "v_head.weight" in value
    # Interrupt after step 3, resume from the step-2 checkpoint: same final policy as uninterrupted.
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "3")
    assert train(runner, *args).exit_code == 130
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    res = train(runner, *args)
    assert res.exit_code == 0, res.output
    a, b = weights(workdir / "run_full/train/final"), weights(run_dir / "train/final")
    # Tolerance: same float32 operations in the same order after the resume; 1e-6 (~100 ulp of weights
    # O(0.1)) absorbs reduction-order noise only — a wrong resume moves weights by ~lr = 1e-3.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_dapo_dynamic_sampling_drops_everything_and_skips_the_update(runner, run_dir):
    # Verifier reward + an untrained policy: every response is wrong (−1), so every group is dropped,
    # the loop refills for max_gen_batches rounds, then skips the update of the step (documented).
    res = train(runner, "train.algo=dapo", "train.reward=verifier", "train.steps=2")
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run_dir / "train/metrics.jsonl")
    prompts, rounds, samples = FAST["train"]["batch_size"], 3, FAST["train"]["samples_per_prompt"]
    for row in rows:
        assert row["update_skipped"] == 1 and row["kept_groups"] == 0 and row["gen_batches"] == rounds
        assert row["dropped_groups"] == prompts * rounds
        assert row["rollout_samples"] == prompts * samples * rounds
        assert row["reward_mean"] == -1.0 and row["skipped_steps"] == 0
    assert rows[-1]["rollout_samples_total"] == 2 * prompts * samples * rounds
    assert not changed(weights(run_dir / "sft/final"), weights(run_dir / "train/final"))


def test_dapo_refills_dropped_groups(runner, run_dir, monkeypatch):
    # First rollout round: equal rewards in every group (all dropped); the refill round: distinct rewards.
    from lco_cli.rl import sampling as sampling_mod

    calls = {"n": 0}

    def fake_score(batch, cfg, reward):
        calls["n"] += 1
        batch.rewards = torch.zeros(batch.size) if calls["n"] % 2 == 1 else torch.arange(batch.size, dtype=torch.float)

    monkeypatch.setattr(sampling_mod, "score", fake_score)
    res = train(runner, "train.algo=dapo", "train.reward=verifier", "train.steps=1")
    assert res.exit_code == 0, res.output
    row = read_jsonl(run_dir / "train/metrics.jsonl")[-1]
    prompts = FAST["train"]["batch_size"]
    assert row["gen_batches"] == 2 and row["dropped_groups"] == prompts and row["kept_groups"] == prompts
    assert "update_skipped" not in row and math.isfinite(row["loss"])
    assert row["rollout_samples"] == 2 * prompts * FAST["train"]["samples_per_prompt"]
    assert changed(weights(run_dir / "sft/final"), weights(run_dir / "train/final"))


@pytest.mark.parametrize("algo,token_fn", [("gkd", "gkd_token_loss"), ("minillm", "minillm_token_loss")])
def test_distillation_goes_through_the_chunked_engine(runner, run_dir, monkeypatch, algo, token_fn):
    """The full-vocabulary divergence only ever sees `loss_chunk_size` rows, inside chunked_token_loss."""
    from lco_cli.engines import generation
    from lco_cli.losses import distillation
    from lco_cli.rl import distill

    chunk, seen, engine_calls, mixed = 4, [], {"n": 0}, {"n": 0}
    real_fn, real_engine, real_mixed = getattr(distillation, token_fn), distill.chunked_token_loss, generation.mixed_sample

    def spy_fn(student, teacher, *a, **k):
        seen.append(student.shape[0])
        return real_fn(student, teacher, *a, **k)

    def spy_engine(policy, *a, **k):
        engine_calls["n"] += 1
        assert policy.num_tokens > chunk  # the micro-batch is larger than one chunk ...
        return real_engine(policy, *a, **k)

    def spy_mixed(*a, **k):
        mixed["n"] += 1
        return real_mixed(*a, **k)

    monkeypatch.setattr(distillation, token_fn, spy_fn)
    monkeypatch.setattr(distill, "chunked_token_loss", spy_engine)
    monkeypatch.setattr(generation, "mixed_sample", spy_mixed)
    res = train(runner, f"train.algo={algo}", "train.steps=1", f"train.loss_chunk_size={chunk}",
                *(["train.algo_args.lmbda=1.0"] if algo == "gkd" else []))
    assert res.exit_code == 0, res.output
    assert engine_calls["n"] > 0 and seen
    assert max(seen) <= chunk  # ... but the divergence never saw more than a chunk of rows
    assert mixed["n"] == (1 if algo == "minillm" else 0)  # MiniLLM rolls out teacher-mixed


def test_teacher_mixed_sampling_decodes_the_mixture(prepared):
    """With top_p → 0 the sampler takes argmax(α·p_T + (1−α)·π): compare to decoding without a KV cache."""
    from lco_cli.runtime import models
    from lco_cli.config import ModelConfig
    from lco_cli.engines.generation import HFEngine, encode_prompts

    mc = ModelConfig(policy=FAST["model"]["policy"])
    policy = models.load_model(str(prepared / "run/sft/final"), mc, trainable=False)
    teacher = models.load_model(str(prepared / "run/rm/final"), mc, trainable=False)
    tok = models.load_tokenizer(str(prepared / "run/sft/final"), mc)
    prompts = encode_prompts(tok, ["12+34=", "5+6=", "99+99="])  # different lengths: left padding
    alpha = 0.3
    got = HFEngine(policy, tok).generate(prompts, 1, temperature=1.0, top_p=1e-9, max_new_tokens=6,
                                         teacher=teacher, teacher_mix_alpha=alpha).response_ids
    for prompt, response in zip(prompts, got):
        seq, want = list(prompt), []
        with torch.no_grad():
            for _ in range(6):
                ids = torch.tensor([seq])
                mix = alpha * torch.softmax(teacher(ids).logits[0, -1], -1) + (1 - alpha) * torch.softmax(policy(ids).logits[0, -1], -1)
                want.append(int(mix.argmax()))
                seq.append(want[-1])
                if want[-1] == tok.eos_token_id:
                    break
        assert response == want


@pytest.mark.parametrize("algo", ["reinforce", "ppo", "grpo", "minillm", "lco"])
def test_micro_batches_and_telemetry_parts_sum_to_the_batch_objective(runner, run_dir, workdir, algo):
    """Same rollouts, micro-batches of 8 vs 3 (and the pos/neg split-gradient passes): same loss and
    gradient norm, so each micro-batch's loss is its exact share of the batch objective."""
    shutil.copytree(run_dir, workdir / "run_b")
    common = [f"train.algo={algo}", "train.steps=1", "train.reward=rm"]
    assert train(runner, *common, "train.micro_batch_size=8").exit_code == 0
    res = train(runner, *common, "train.micro_batch_size=3", "train.telemetry.split_grad_norm=true", run="run_b")
    assert res.exit_code == 0, res.output
    a, b = read_jsonl(run_dir / "train/metrics.jsonl")[-1], read_jsonl(workdir / "run_b/train/metrics.jsonl")[-1]
    # Tolerances: micro-batches of 8 vs 3 change only the float32 summation order of per-token terms
    # (~1e-7 relative per addition, over ~100 tokens), so rel=1e-4; a wrong per-micro-batch normaliser
    # would be off by a factor of up to 8/3.
    assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)  # same rollouts
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert b["grad_norm"] <= b["grad_norm_pos"] + b["grad_norm_neg"] + 1e-6
    if algo == "ppo":
        assert b["value_loss"] == pytest.approx(a["value_loss"], rel=1e-4)


def test_loop_owned_algo_args_are_not_repeated(runner, run_dir):
    res = train(runner, "train.algo=grpo", "train.steps=1", "train.algo_args.group_size=3")
    assert res.exit_code == 2
    assert "train.algo_args.group_size" in res.output and "train.samples_per_prompt" in res.output
    res = train(runner, "train.algo=grpo", "train.steps=1", "train.reward=rm",
                f"train.algo_args.group_size={FAST['train']['samples_per_prompt']}")
    assert res.exit_code == 0, res.output  # the same value is fine


@pytest.mark.slow
@pytest.mark.parametrize("algo,reward", [("ppo", "rm"), ("dapo", "verifier")])
def test_two_processes(run_dir, workdir, algo, reward):
    """2 processes (torchrun, gloo on CPU): PPO's DDP value model next to the policy with split telemetry
    and minibatches; DAPO's dynamic-sampling decisions taken globally (all dropped -> every rank skips)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "lco_cli", "train", "fast.yaml",
           "--run-dir", "run", "train.steps=2", "train.eval_every=0", f"train.algo={algo}", f"train.reward={reward}",
           "train.minibatches=2", "train.telemetry.split_grad_norm=true"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=workdir, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_jsonl(run_dir / "train/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    samples = FAST["train"]["batch_size"] * FAST["train"]["samples_per_prompt"]
    if algo == "ppo":
        assert all(math.isfinite(r["value_loss"]) and r["grad_norm_pos"] > 0 for r in rows)
        assert rows[0]["rollout_samples"] == samples  # both ranks' shares counted
    else:
        assert all(r["update_skipped"] == 1 and r["rollout_samples"] == 3 * samples for r in rows)
