"""bench/gpu_check.py --cpu-dry-run: every step of the GPU acceptance check runs on the CPU at tiny sizes,
so the one GPU run is a single prepared command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
STAGES = ["sft", "rm", "train", "eval", "train_fsdp", "train_lora", "train_split_grad"]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    res = subprocess.run([sys.executable, str(ROOT / "bench/gpu_check.py"), "--cpu-dry-run", "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["env", "cuda_tests", "sft", "rm", "train", "eval", "train_fsdp", "gpu_step", "train_lora",
                           "train_split_grad"]
    assert summary["mode"] == "cpu-dry-run" and summary["ok"] is True
    assert steps["cuda_tests"]["status"] == "skipped" and steps["cuda_tests"]["numbers"]["skipped"] > 0
    assert all(s["status"] == "ok" for n, s in steps.items() if n != "cuda_tests")
    assert steps["env"]["numbers"]["cuda_available"] is False
    for name in STAGES:
        assert steps[name]["seconds"] > 0 and steps[name]["numbers"]["rc"] == 0
        if name != "eval":
            assert steps[name]["numbers"]["final"] is True  # recorded right after the step: variants replace train/
    run = out / "run"
    for stage in ("sft", "rm", "train"):
        assert any((run / stage / "final").iterdir())
    assert "train/arith pass@1" in steps["eval"]["numbers"]
    assert any(k.startswith("grad_norm") and k != "grad_norm" for k in steps["train_split_grad"]["numbers"])
    assert (run / "train/final/adapter_config.json").exists() is False  # the last variant (split grad) is a full model
    assert steps["train_fsdp"]["numbers"]["num_processes"] == 1
    assert {"lco_dense", "grpo"} <= set(steps["gpu_step"]["numbers"])
    table = (out / "summary.md").read_text()
    assert all(f"| {n} |" in table for n in steps) and "ALL OK" in table
