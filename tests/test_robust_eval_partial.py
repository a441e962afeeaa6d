"""eval.checkpoint_every_minutes (issue 14): a benchmark killed midway resumes from its partial file in
a real subprocess, and the results equal an uninterrupted run's, sample for sample."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import invoke, read_jsonl

# 24 problems × 2 samples in engine batches of 8: 6 chunks of 4 problems.
EVAL = ["eval.policies=[base]", "eval.limit=24", "eval.batch_size=8", "eval.temperature=1.0"]
CKPT = ["eval.checkpoint_every_minutes=0.001"]  # 0.06 s: a save after every chunk


def lco(*args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "lco_cli", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def done_in(partial) -> int:
    """Problems the partial file holds (0 while it does not exist; atomic writes, so never torn)."""
    return len(json.loads(partial.read_text())["results"]) if partial.exists() else 0


def stop_when(proc, partial, more_than: int, sig) -> tuple[int, str]:
    """Send `sig` once the partial file holds more than `more_than` problems; returns how many."""
    deadline = time.time() + 240
    while time.time() < deadline and done_in(partial) <= more_than and proc.poll() is None:
        time.sleep(0.05)
    n = done_in(partial)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return n, err


@pytest.mark.slow
def test_killed_eval_resumes_from_its_partial_file_to_identical_results(runner, fast_preset, workdir):
    # The reference: checkpoints off (one engine call over every problem, as before the key existed).
    assert invoke(runner, "eval", fast_preset, "--run-dir", "full", *EVAL).exit_code == 0
    run, slow = workdir / "cut", {"LCO_EVAL_CHUNK_DELAY": "0.5"}
    partial = run / "eval/samples/base/arith.partial.json"
    # SIGTERM after the first save: the stage ends like Ctrl-C and says the next run resumes.
    proc = lco("eval", fast_preset, "--run-dir", run, *EVAL, *CKPT, env_extra=slow)
    first, err = stop_when(proc, partial, 0, signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert "resumes from its finished results and partial files" in err
    assert 0 < first < 24 and first % 4 == 0
    # kill -9 after the resumed run saved more: nothing runs on the way out, nothing may be lost.
    proc = lco("eval", fast_preset, "--run-dir", run, *EVAL, *CKPT, env_extra=slow)
    second, err = stop_when(proc, partial, first, signal.SIGKILL)
    assert proc.returncode == -9 and first < second < 24, err[-2000:]
    assert f"{first} problems done before the interruption" in err
    # Finish: same results.json and the same generations as the uninterrupted run; the partial is gone.
    res = invoke(runner, "eval", fast_preset, "--run-dir", run, *EVAL, *CKPT)
    assert res.exit_code == 0, res.output
    assert f"{second} problems done before the interruption" in res.stderr
    assert (run / "eval/results.json").read_text() == (workdir / "full/eval/results.json").read_text()
    assert read_jsonl(run / "eval/samples/base/arith.jsonl") == read_jsonl(workdir / "full/eval/samples/base/arith.jsonl")
    assert not partial.exists()


def test_checkpoints_change_no_number_and_leave_no_partial(runner, fast_preset, workdir):
    """Chunks fill whole engine batches, so turning checkpoints on changes no generation."""
    for name, extra in (("off", []), ("on", CKPT)):
        assert invoke(runner, "eval", fast_preset, "--run-dir", name, *EVAL, *extra).exit_code == 0
    for f in ("results.json", "samples/base/arith.jsonl"):
        assert (workdir / "on/eval" / f).read_text() == (workdir / "off/eval" / f).read_text()
    assert not list((workdir / "on/eval").rglob("*.partial.json"))


def test_torn_stale_or_foreign_partial_files_are_dropped(tmp_path, capsys):
    from lco_cli.evals.partial import Partial, rng_state

    path = tmp_path / "arith.partial.json"
    good = {"identity": "abc", "results": [[{"id": "1"}]], "rng": rng_state()}
    path.write_text(json.dumps(good)[:40])  # a write cut short (not by lco's atomic writes, but a disk can)
    assert Partial(path, "abc", 1.0).load(resume=True) == ([], None) and not path.exists()
    err = capsys.readouterr().err
    assert "arith.partial.json: unreadable" in err and "dropped" in err
    path.write_text(json.dumps(good))
    assert Partial(path, "other", 1.0).load(resume=True) == ([], None) and not path.exists()  # config changed
    path.write_text(json.dumps(good))
    assert Partial(path, "abc", 1.0).load(resume=False) == ([], None) and not path.exists()  # a fresh stage
    path.write_text(json.dumps(good))
    assert Partial(path, "abc", 1.0).load(resume=True)[0] == good["results"]


def test_checkpoint_every_minutes_must_be_positive_and_finite(runner, fast_preset):
    for bad in ("0", "-1", "inf", "nan"):
        res = invoke(runner, "eval", fast_preset, f"eval.checkpoint_every_minutes={bad}")
        assert res.exit_code == 2 and "eval.checkpoint_every_minutes" in res.output, res.output
