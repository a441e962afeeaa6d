"""Signals and kills in a real subprocess (issue 14 §3–4): SIGTERM / SIGHUP end a stage like Ctrl-C
(status failed + interrupted, a message saying whether a checkpoint exists, exit 128 + signal), a
kill -9 loses nothing, and the finished run is identical to an uninterrupted one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from conftest import invoke, read_jsonl
from safetensors.torch import load_file

ARGS = ["sft.checkpoint_every=3", "sft.eval_problems=0"]


def lco(*args, env_extra=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "lco_cli", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def status(path):
    return json.loads((path / "sft/status.json").read_text())


def test_sigterm_sighup_and_kill9_then_exact_resume(runner, fast_preset, workdir):
    run = workdir / "cut"
    # SIGTERM before the first checkpoint (step 3): exit 143, and the message says the stage restarts.
    proc = lco("sft", fast_preset, "--run-dir", run, *ARGS, env_extra={"LCO_INTERRUPT_AT_STEP": "2:TERM"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted (SIGTERM): stage 'sft' stopped before its first checkpoint; the next run starts it again from step 0" in err
    assert "Traceback" not in err and "%|" not in err  # no third-party progress bars either
    st = status(run)
    assert st["state"] == "failed" and st["interrupted"] is True
    # kill -9 once step 4 is logged (the step-3 checkpoint exists): nothing can run, nothing may be lost.
    proc = lco("sft", fast_preset, "--run-dir", run, *ARGS, env_extra={"LCO_STEP_DELAY": "0.3"})
    metrics = run / "sft/metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and any(r["step"] >= 4 for r in read_jsonl(metrics))):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -9 and not (run / "sft/final").exists()
    # SIGHUP after step 5, resumed from step 3: exit 129, and the message names the checkpoint.
    proc = lco("sft", fast_preset, "--run-dir", run, *ARGS, env_extra={"LCO_INTERRUPT_AT_STEP": "5:HUP"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 129, err[-2000:]
    assert "interrupted (SIGHUP): stage 'sft' stopped; the next run resumes from its checkpoint step-000003" in err
    # Finish, and compare with an uninterrupted run.
    assert invoke(runner, "sft", fast_preset, "--run-dir", run, *ARGS).exit_code == 0
    assert invoke(runner, "sft", fast_preset, "--run-dir", "full", *ARGS).exit_code == 0
    a, b = load_file(str(workdir / "full/sft/final/model.safetensors")), load_file(str(run / "sft/final/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_jsonl(metrics)] == [1, 2, 3, 4, 5, 6]
    leftovers = [p for p in run.rglob("*") if p.name.endswith((".tmp", ".old", ".swap")) or "staging" in p.name]
    assert leftovers == []
