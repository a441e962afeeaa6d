"""The collapse guard (issue 19): a collapsed run stops with exit 1 and is not marked done; healthy runs and
small held-out sets are not stopped. Every other train test in the suite runs with the guard on (its default)
and must not trip it."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import yaml

from conftest import FAST, invoke, read_jsonl
from lco_cli.runtime.guard import CollapseGuard, last_checkpoint_at_or_before

CFG = SimpleNamespace(enabled=True, patience=3, uniform_entropy=0.98, heldout_fraction=0.5, heldout_sigmas=2.0)


def rows(**series):
    n = len(next(iter(series.values())))
    return [{"step": i + 1, **{k: v[i] for k, v in series.items() if v[i] is not None}} for i in range(n)]


def first_trip(guard, seq):
    for row in seq:
        if (symptom := guard.check(row)) is not None:
            return row["step"], symptom
    return None


def test_dead_gradients_trip_after_patience_steps_and_reset_on_a_live_one():
    g = CollapseGuard(CFG, vocab_size=100)
    assert first_trip(g, rows(grad_norm=[0.5, 0.0, 0.0, 0.3, 0.0, 0.0, float("nan")])) == \
        (7, "the gradient norm was exactly 0 or non-finite for 3 consecutive steps")
    assert g.last_good_step("the gradient") == 4  # the step before the streak began


def test_uniform_outputs_trip_only_when_the_run_started_below_uniform():
    ln_v = math.log(100)
    collapsing = rows(entropy=[1.0, 0.99 * ln_v, 0.99 * ln_v, 0.99 * ln_v], grad_norm=[1.0] * 4)
    step, symptom = first_trip(CollapseGuard(CFG, vocab_size=100), collapsing)
    assert step == 4 and symptom.startswith("the policy is uniform")
    random_init = rows(entropy=[0.999 * ln_v] * 5, grad_norm=[1.0] * 5)  # near uniform from the start: no collapse
    assert first_trip(CollapseGuard(CFG, vocab_size=100), random_init) is None


def test_heldout_drop_must_be_large_and_significant():
    g = CollapseGuard(CFG, vocab_size=100, heldout0=0.30, heldout_n=400)
    # 0.14 < 0.5 × 0.30 and 0.16 apart = 5.6 standard errors at n = 400: a collapse
    step, symptom = first_trip(g, rows(heldout_acc=[0.33, None, 0.14], grad_norm=[1.0] * 3))
    assert step == 3 and "held-out accuracy 0.140 fell below 0.5 × its step-0 value 0.300" in symptom
    assert g.last_good_step(symptom) == 1
    # the same accuracies on 10 problems: 0.16 apart is 0.9 standard errors, noise — not stopped
    small = CollapseGuard(CFG, vocab_size=100, heldout0=0.30, heldout_n=10)
    assert first_trip(small, rows(heldout_acc=[0.1], grad_norm=[1.0])) is None
    # 0.20 is not below half of 0.30: not stopped, however many problems
    assert first_trip(CollapseGuard(CFG, 100, 0.30, 400), rows(heldout_acc=[0.20], grad_norm=[1.0])) is None


def test_disabled_guard_never_trips():
    off = SimpleNamespace(**{**vars(CFG), "enabled": False})
    assert first_trip(CollapseGuard(off, 100, 0.3, 400), rows(grad_norm=[0.0] * 5, heldout_acc=[0.0] * 5)) is None


def test_message_names_the_step_symptom_checkpoint_and_gauge(tmp_path):
    for s in (2, 4, 8):
        (tmp_path / f"step-{s:06d}").mkdir()
    (tmp_path / "step-000006.tmp").mkdir()
    assert last_checkpoint_at_or_before(tmp_path, 5).name == "step-000004"
    assert last_checkpoint_at_or_before(tmp_path, 1) is None
    g = CollapseGuard(CFG, 100)
    first_trip(g, rows(grad_norm=[1.0] * 5 + [0.0] * 3))
    msg = g.message(8, "the gradient norm was exactly 0 or non-finite for 3 consecutive steps", tmp_path, 41.5)
    assert "collapsed at step 8" in msg and "last good checkpoint: " in msg and "step-000004" in msg
    assert "gauge η/(Δμ(1−J)/T) at its last measurement: 41.5" in msg


def test_exploding_one_layer_model_stops_and_is_not_done(runner, workdir):
    """A 1-layer tiny model at train.lr=1e6: weights blow up, the gradient norm is exactly 0 from step 2. The run
    stops at step 4 with exit 1, the stage is failed (not done), no final model."""
    one_layer = {**FAST, "model": {"policy": "tiny:hidden=32,layers=1,heads=2,kv_heads=2,intermediate=64"}}
    (workdir / "one.yaml").write_text(yaml.safe_dump(one_layer))
    assert invoke(runner, "sft", "one.yaml", "--run-dir", "r").exit_code == 0
    res = invoke(runner, "train", "one.yaml", "--run-dir", "r", "train.init_from=sft", "train.algo=grpo", "train.lr=1e6",
                 "train.steps=8", "train.eval_every=0", "train.telemetry.gradient_gap=1")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "the policy collapsed at step" in res.output and "gradient norm was exactly 0" in res.output
    status = json.loads((workdir / "r/train/status.json").read_text())
    assert status["state"] == "failed" and "collapsed" in status["error"]
    assert not (workdir / "r/train/final").exists()
    logged = read_jsonl(workdir / "r/train/metrics.jsonl")
    assert logged[-1]["step"] < 8 and logged[-1]["grad_norm"] == 0.0  # the row that tripped it is logged


def test_heldout_collapse_stops_the_run(runner, run_dir, monkeypatch):
    """Held-out accuracy falling far below its step-0 value stops the run at that evaluation. The fast preset's
    policy scores 0 held-out, so the step-0 value is set through the guard's own entry point."""
    from lco_cli.runtime import guard as guard_module

    real = guard_module.CollapseGuard.set_heldout0
    monkeypatch.setattr(guard_module.CollapseGuard, "set_heldout0", lambda self, acc, n: real(self, 0.9, 400))
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", "train.steps=3", "train.eval_every=2")
    assert res.exit_code == 1 and "collapsed at step 2: held-out accuracy" in res.output, res.output
    assert json.loads((run_dir / "train/status.json").read_text())["state"] == "failed"
