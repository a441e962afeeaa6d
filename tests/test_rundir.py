"""Run-directory contract: atomic writes, lock refusal, status transitions, data order."""
from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from lco_cli.errors import StageLockedError
from lco_cli.runtime.rundir import MetricsLog, RunDir, atomic_dir, atomic_write_json
from lco_cli.runtime.training import batch_indices


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})

    class Boom(Exception):
        pass

    def boom(*a, **k):
        raise Boom

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(Boom):
        atomic_write_json(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp files left behind


def test_atomic_dir_appears_only_when_complete(tmp_path):
    final = tmp_path / "final"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "model.bin").write_text("ok")
    assert (final / "model.bin").read_text() == "ok"


def _hold_lock(path, ready, release):
    sd = RunDir(path).stage("sft")
    with sd.lock():
        ready.set()
        release.wait(10)


def test_lock_refuses_second_writer(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(StageLockedError, match="being written by another process"):
            with RunDir(tmp_path).stage("sft").lock():
                pass
    finally:
        release.set()
        proc.join(10)
    with RunDir(tmp_path).stage("sft").lock():  # free again once the holder exits
        pass


def test_status_transitions_recorded_in_run_json(tmp_path):
    run = RunDir(tmp_path)
    sd = run.stage("rm")
    sd.set_status("running", config_hash="abc")
    assert sd.status()["state"] == "running" and "started" in sd.status()
    sd.set_status("failed", error="boom")
    assert sd.status()["error"] == "boom" and "finished" in sd.status()
    sd.set_status("running")
    assert "error" not in sd.status()
    sd.set_status("done")
    assert not sd.is_done()  # done but no final/ yet: not usable
    sd.final.mkdir(parents=True)
    assert sd.is_done()
    assert run.read()["stages"]["rm"]["state"] == "done"


def test_metrics_truncate_after(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for s in range(1, 6):
        log.append({"step": s, "loss": s})
    log.truncate_after(3)
    assert [r["step"] for r in log.rows()] == [1, 2, 3]


def test_batch_indices_are_deterministic_epoch_permutations():
    n, b = 10, 4
    seen = [i for step in range(5) for i in batch_indices(step, b, n, seed=1)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert batch_indices(3, b, n, 1) == batch_indices(3, b, n, 1)
    assert batch_indices(0, b, n, 1) != batch_indices(0, b, n, 2)
