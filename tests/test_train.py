"""`lco train` (LCO) through the real CLI on a tiny model: every objective × advantage, telemetry,
resume, multi-epoch updates, the NaN guard, missing prerequisites."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke, read_jsonl

METRIC_KEYS = {"step", "loss", "grad_norm", "lr", "reward_mean", "reward_std", "advantage_mean", "entropy", "sampled_prob",
               "kl_ref", "response_len", "truncated_frac", "tokens_per_s", "skipped_steps", "logit_grad_sampled", "logit_grad_other"}


def train(runner, *overrides):
    return invoke(runner, "train", "fast.yaml", "--run-dir", "run", "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl", *overrides)


@pytest.mark.parametrize("objective", ["kld", "mse", "lch"])
@pytest.mark.parametrize("advantage", ["dpo", "logprob", "sparse"])
def test_every_objective_and_advantage_trains(runner, run_dir, objective, advantage):
    # The untrained tiny policy is never right, so verifier rewards would all be equal (zero advantage):
    # sparse advantages use the RM's implicit sequence reward here.
    res = train(runner, f"train.objective={objective}", f"train.advantage={advantage}", "train.steps=2", "train.eval_every=0",
                "train.advantage_norm=batch", "train.reward=rm")
    assert res.exit_code == 0, res.output
    st = run_dir / "train"
    assert {"status.json", "config.yaml", "metrics.jsonl", "final", "eval.json"} <= {p.name for p in st.iterdir()}
    rows = read_jsonl(st / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert METRIC_KEYS <= set(rows[-1]), METRIC_KEYS - set(rows[-1])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    before, after = load_file(str(run_dir / "sft/final/model.safetensors")), load_file(str(st / "final/model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in after), "parameters did not change"
    assert json.loads((st / "status.json").read_text())["state"] == "done"


def test_split_gradient_telemetry(runner, run_dir):
    res = train(runner, "train.steps=1", "train.eval_every=0", "train.telemetry.split_grad_norm=true")
    assert res.exit_code == 0, res.output
    row = read_jsonl(run_dir / "train/metrics.jsonl")[-1]
    for k in ("grad_norm_pos", "grad_norm_neg", "logit_grad_sampled_pos", "logit_grad_sampled_neg"):
        assert k in row
    # The full gradient is the sum of the two parts: triangle inequality both ways. Tolerance: the three
    # norms are separate float32 reductions of O(1) values (relative error ~1e-7 each), so 1e-6 absolute.
    assert row["grad_norm"] <= row["grad_norm_pos"] + row["grad_norm_neg"] + 1e-6
    assert row["grad_norm"] >= abs(row["grad_norm_pos"] - row["grad_norm_neg"]) - 1e-6


def test_multi_epoch_minibatch_updates_and_beta_neg(runner, run_dir):
    res = train(runner, "train.steps=1", "train.eval_every=0", "train.update_epochs=2", "train.minibatches=2",
                "train.beta_neg=4.0", "train.advantage_support=policy_topk", "train.advantage_topk=5", "train.advantage_clip=2.0")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("topk", [1, 5])
def test_topk_support_single_update(runner, run_dir, topk):
    """A centred advantage on a one-token support is 0, so z* = z_old: zero loss, no update."""
    res = train(runner, "train.steps=1", "train.eval_every=0", "train.minibatches=1", "train.advantage_support=policy_topk",
                f"train.advantage_topk={topk}")
    assert res.exit_code == 0, res.output
    row = read_jsonl(run_dir / "train/metrics.jsonl")[-1]
    before = load_file(str(run_dir / "sft/final/model.safetensors"))
    after = load_file(str(run_dir / "train/final/model.safetensors"))
    changed = any(not torch.equal(before[k], after[k]) for k in after)
    if topk == 1:
        # exact zero gradient (π_θ and π* through the same ops), so Adam leaves every weight alone;
        # the KL value itself is a float32 difference of O(5) terms.
        assert row["grad_norm"] == 0.0 and row["loss"] == pytest.approx(0.0, abs=1e-6)
        assert not changed
    else:
        assert row["loss"] > 1e-5 and row["grad_norm"] > 1e-3 and changed


def test_resume_equals_uninterrupted(runner, run_dir, workdir, monkeypatch):
    shutil.copytree(run_dir, workdir / "run_full")
    args = ["train.steps=4", "train.checkpoint_every=2", "train.eval_every=0"]
    assert invoke(runner, "train", "fast.yaml", "--run-dir", "run_full", *args).exit_code == 0
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "3")
    assert train(runner, *args).exit_code == 130
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    res = train(runner, *args)
    assert res.exit_code == 0, res.output
    a = load_file(str(workdir / "run_full/train/final/model.safetensors"))
    b = load_file(str(run_dir / "train/final/model.safetensors"))
    # Tolerance: the resumed run redoes the same float32 operations in the same order; 1e-6 (~100 ulp of
    # weights O(0.1)) only absorbs reduction-order noise, while wrong data, RNG or optimizer state after a
    # resume moves weights by ~lr = 1e-3.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert [r["step"] for r in read_jsonl(run_dir / "train/metrics.jsonl")] == [1, 2, 3, 4]


def test_nan_guard_fails_cleanly_keeping_checkpoint(runner, run_dir, monkeypatch):
    from lco_cli.losses import lco as objectives

    real = objectives.LCOKLD.loss_and_grad
    calls = {"n": 0}

    def poisoned(self, z, z_star, need_grad=True):
        calls["n"] += 1
        loss, grad = real(self, z, z_star, need_grad)
        if calls["n"] > 1:  # the first chunk (step 1) is fine
            loss, grad = loss * float("nan"), None if grad is None else grad * float("nan")
        return loss, grad

    monkeypatch.setattr(objectives.LCOKLD, "loss_and_grad", poisoned)
    res = train(runner, "train.steps=6", "train.checkpoint_every=1", "train.eval_every=0", "train.max_skipped=2")
    assert res.exit_code == 1 and "consecutive non-finite steps" in res.output and "Traceback" not in res.output
    status = json.loads((run_dir / "train/status.json").read_text())
    assert status["state"] == "failed"
    rows = read_jsonl(run_dir / "train/metrics.jsonl")
    assert rows[-1]["skipped_steps"] >= 1
    assert (run_dir / "train/checkpoints/step-000001").exists()


def test_missing_rm_exit_3(runner, run_dir):
    shutil.rmtree(run_dir / "rm")
    res = train(runner, "train.steps=1")
    assert res.exit_code == 3 and "run/rm/final" in res.output
    res = train(runner, "train.steps=1", "train.advantage=sparse", "train.reward=verifier", "train.eval_every=0")
    assert res.exit_code == 0, res.output  # sparse + verifier needs no RM


def test_a_reward_function_that_raises_fails_the_stage_in_one_line(runner, run_dir, monkeypatch):
    """A bug in the user's reward function: exit 1, one message naming the function, the exception and
    the example it failed on; no traceback; the stage is recorded as failed."""
    import sys

    (run_dir.parent / "raising_reward.py").write_text(
        "def score(prompt, completion, row):\n    raise KeyError('keyword')\n")
    monkeypatch.syspath_prepend(str(run_dir.parent))
    try:
        res = train(runner, "train.steps=1", "train.eval_every=0", "train.reward=raising_reward:score")
    finally:
        sys.modules.pop("raising_reward", None)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert "error: train.reward: 'raising_reward:score' raised KeyError: 'keyword' on example '" in res.output
    assert "(prompt 0 of the batch)" in res.output
    status = json.loads((run_dir / "train/status.json").read_text())
    assert status["state"] == "failed" and "raised KeyError" in status["error"]
