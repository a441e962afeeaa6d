"""bench/gpu_step.py runs end to end on the CPU with --tiny (the GPU run is then one short call)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_step_tiny_writes_json_and_table(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench/gpu_step.py"), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_step.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == ["lco_dense", "lco_topk", "lco_sparse", "grpo", "ppo"]
    setup = data["setup"]
    tokens = setup["prompts"] * setup["samples"] * (setup["seq_len"] - setup["prompt_len"])
    for r in rows.values():
        assert r["tokens"] == tokens and r["step_time_s"] > 0 and r["model_tflop"] > 0
        assert r["peak_mem_gib"] is None and r["mfu"] is None  # CPU: no GPU memory counter, no peak rate
        micro_batches = setup["prompts"] * setup["samples"] // setup["micro_batch"]
        assert r["passes"]["policy"] == micro_batches  # one training forward per micro-batch
        assert r["passes"]["reference (no grad)"] == micro_batches
    # the RM's two models are read only by the methods that use token-level RM signals
    for m in ("lco_dense", "lco_topk", "ppo"):
        assert rows[m]["passes"]["rm (no grad)"] == rows[m]["passes"]["rm_ref (no grad)"] == micro_batches
    for m in ("lco_sparse", "grpo"):
        assert "rm (no grad)" not in rows[m]["passes"]
    assert rows["ppo"]["passes"]["value"] == micro_batches  # the value model trains
    assert rows["lco_sparse"]["model_tflop"] < rows["lco_dense"]["model_tflop"] < rows["ppo"]["model_tflop"]
    table = (tmp_path / "gpu_step.md").read_text()
    assert all(f"| {m} |" in table for m in rows) and "n/a (CPU)" in table
