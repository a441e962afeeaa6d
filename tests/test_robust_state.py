"""Recoverable state (issue 14 §3): checkpoint manifests verified on resume with fallback to the
previous good checkpoint, unreadable status.json / run.json, a torn metrics line, stale temp files,
no duplicated rows — all through the real CLI."""
from __future__ import annotations

import json

import torch
from conftest import invoke, read_jsonl
from safetensors.torch import load_file

CUT = ["sft.checkpoint_every=2", "sft.keep_checkpoints=2"]


def same_weights(a, b) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_damaged_newest_checkpoint_torn_metrics_and_stale_temp(runner, fast_preset, workdir, monkeypatch):
    assert invoke(runner, "sft", fast_preset, "--run-dir", "full", *CUT).exit_code == 0
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "5")
    assert invoke(runner, "sft", fast_preset, "--run-dir", "cut", *CUT).exit_code == 130
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    sft = workdir / "cut/sft"
    assert sorted(p.name for p in (sft / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    weights = sft / "checkpoints/step-000004/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated file, as a full disk leaves it
    with open(sft / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "loss": 3.9')  # a write cut by kill -9
    leftovers = [sft / "checkpoints/.step-000006.ab12.tmp", sft / ".status.json.x1y2.tmp", sft / ".final.cd34.tmp"]
    leftovers[0].mkdir()
    leftovers[1].write_text("{")
    leftovers[2].mkdir()
    res = invoke(runner, "sft", fast_preset, "--run-dir", "cut", *CUT)
    assert res.exit_code == 0, res.output
    assert "checkpoint" in res.stderr and "step-000004 is damaged" in res.stderr and "model.safetensors has 1000 bytes" in res.stderr
    assert "last line is not valid JSON" in res.stderr
    assert same_weights(workdir / "full/sft/final", sft / "final")  # resumed from step 2: still exact
    assert [r["step"] for r in read_jsonl(sft / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert not any(p.exists() for p in leftovers)
    manifest = json.loads((sft / "checkpoints/step-000004/manifest.json").read_text())  # rewritten by the resumed run
    assert manifest["files"]["model.safetensors"]["size"] > 1000


def test_unreadable_status_and_run_json_name_the_file_and_fix(runner, fast_preset, workdir):
    assert invoke(runner, "sft", fast_preset, "--run-dir", "r", "sft.max_steps=1").exit_code == 0
    status = workdir / "r/sft/status.json"
    good = status.read_text()
    status.write_text('{"state": "do')
    for cmd in (["sft", fast_preset, "--run-dir", "r", "sft.max_steps=1"], ["run", fast_preset, "--run-dir", "r"]):
        res = invoke(runner, *cmd)
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert "r/sft/status.json is unreadable" in res.output and "delete it to start stage 'sft' over" in res.output
    status.write_text(good)
    (workdir / "r/run.json").write_bytes(b"\x00\x01garbage")
    res = invoke(runner, "sft", fast_preset, "--run-dir", "r", "sft.max_steps=1")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "r/run.json is unreadable" in res.output and "lco writes it again" in res.output


def test_kill_before_first_checkpoint_logs_step_zero_once(runner, run_dir, monkeypatch):
    """train logs a step-0 held-out row before step 1; a kill before the first checkpoint must not
    leave it twice after the rerun."""
    args = ["train", "fast.yaml", "--run-dir", "run", "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl", "train.steps=2",
            "train.eval_every=1", "train.checkpoint_every=2"]
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "1")
    res = invoke(runner, *args)
    assert res.exit_code == 130 and "before its first checkpoint" in res.output
    assert [r["step"] for r in read_jsonl(run_dir / "train/metrics.jsonl")] == [0, 1]
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    assert invoke(runner, *args).exit_code == 0
    assert [r["step"] for r in read_jsonl(run_dir / "train/metrics.jsonl")] == [0, 1, 2]


def test_time_based_checkpoints(runner, fast_preset, workdir, monkeypatch):
    """checkpoint_every_minutes saves between the step-based checkpoints (slow steps, preemptible jobs)."""
    monkeypatch.setenv("LCO_STEP_DELAY", "0.2")  # each step takes > 0.1 s: a time-based checkpoint after each
    res = invoke(runner, "sft", fast_preset, "--run-dir", "r", "sft.max_steps=3", "sft.checkpoint_every=100",
                 "sft.checkpoint_every_minutes=0.001", "sft.keep_checkpoints=5", "sft.eval_problems=0")
    assert res.exit_code == 0, res.output
    # checkpoint_every=100 never fires here, so each checkpoint is a time-based one. Step 2 is certainly
    # due (the 0.2 s sleep after step 1 exceeds 0.06 s); step 1 only when its own compute took > 0.06 s.
    names = {p.name for p in (workdir / "r/sft/checkpoints").iterdir()}
    assert "step-000002" in names and names <= {"step-000001", "step-000002"}


def test_stale_temp_files_in_eval_samples_removed(tmp_path):
    from lco_cli.runtime.rundir import RunDir

    sd = RunDir(tmp_path).stage("eval")
    stale = sd.path / "samples/train/.arith.summary.json.dma1ud68.tmp"  # left by a kill -9 in atomic_write_text
    stale.parent.mkdir(parents=True)
    stale.write_text("{")
    keep = sd.path / "samples/train/arith.jsonl"
    keep.write_text("{}\n")
    assert sd.remove_stale_temp() == [stale] and keep.exists() and not stale.exists()
