"""Divergence is caught, not hidden (issue 14 §6): non-finite parameters after a step end the stage
cleanly with its checkpoint intact; a gradient norm stuck at exactly 0 (or a collapsed entropy)
warns on stderr and in metrics.jsonl."""
from __future__ import annotations

import json
import shutil

from conftest import invoke, read_jsonl

from lco_cli.runtime.checkpoint import manifest_problem
from lco_cli.runtime.optim import DivergenceWatch


def test_non_finite_parameters_fail_cleanly_checkpoint_intact(runner, fast_preset, workdir, monkeypatch):
    """float16 weights with AdamW on the CPU turn non-finite in the first update (eps underflows).
    A float16 stage resumed from a good checkpoint fails at its next step, and that checkpoint stays."""
    common = ["sft.checkpoint_every=1", "sft.eval_problems=0"]
    fp16 = [*common, "model.dtype=float16"]
    res = invoke(runner, "sft", fast_preset, "--run-dir", "r", *fp16)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "parameters became non-finite" in res.output and "the last checkpoint is intact" in res.output
    sft = workdir / "r/sft"
    status = json.loads((sft / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite" in status["error"] and not (sft / "final").exists()
    assert not (sft / "checkpoints").exists()  # nothing saved after the bad step
    # A good step-2 checkpoint (float32 run, interrupted) under the failed float16 stage: it resumes, fails at step 3.
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "2")
    assert invoke(runner, "sft", fast_preset, "--run-dir", "good", *common).exit_code == 130
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    (sft / "checkpoints").mkdir()
    shutil.copytree(workdir / "good/sft/checkpoints/step-000002", sft / "checkpoints/step-000002")
    before = {p.name: p.read_bytes() for p in (sft / "checkpoints/step-000002").iterdir()}
    res = invoke(runner, "sft", fast_preset, "--run-dir", "r", *fp16)
    assert res.exit_code == 1 and "parameters became non-finite" in res.output
    assert [p.name for p in (sft / "checkpoints").iterdir()] == ["step-000002"]
    assert {p.name: p.read_bytes() for p in (sft / "checkpoints/step-000002").iterdir()} == before
    assert manifest_problem(sft / "checkpoints/step-000002") is None


def test_collapsed_training_warns_in_log_and_metrics(runner, run_dir):
    """train.lr=1e3 collapses the tiny policy: grad norm exactly 0 from step 2 (issue 14). With the collapse
    guard off (it stops such a run: tests/test_stability.py) the divergence watch still warns."""
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl",
                 "train.lr=1e3", "train.steps=4", "train.eval_every=0", "logging.divergence_window=2",
                 "train.guard.enabled=false")
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run_dir / "train/metrics.jsonl")
    warned = [r for r in rows if "warning" in r]
    assert warned and "grad_norm is exactly 0 for 2 consecutive logged steps" in warned[0]["warning"]
    assert all(r["grad_norm"] == 0.0 for r in rows if r["step"] >= warned[0]["step"] - 1)
    assert f"warning: train step {warned[0]['step']}: grad_norm is exactly 0" in res.stderr


def test_entropy_collapse_warns_once_per_streak():
    watch = DivergenceWatch("train", window=3, entropy_floor=0.01)
    seen = [watch.observe({"step": s, "grad_norm": 0.5, "entropy": e}) for s, e in
            enumerate([2.0, 0.001, 0.002, 0.0, 0.0, 1.0, 0.0], 1)]
    assert [bool(x) for x in seen] == [False, False, False, True, False, False, False]
    assert "entropy below 0.01 for 3 consecutive logged steps" in seen[3]["warning"]
