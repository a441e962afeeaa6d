"""bench/stability_map.py: the critical-lr and onset logic on synthetic runs, and a smoke run of the map."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import stability_report as rep  # noqa: E402

from conftest import FAST, write_pairs  # noqa: E402


def curve(*accs, every=10):
    """(step, samples, acc) rows, step 0 first."""
    return [(i * every, i * every * 64, a) for i, a in enumerate(accs)]


def test_critical_lr_is_the_last_lr_before_the_first_fall():
    start = 0.30
    pts = [(1, 1e-5, 0.45), (3.16, 3.16e-5, 0.40), (10, 1e-4, 0.31), (31.6, 3.16e-4, 0.29), (100, 1e-3, 0.05)]
    c = rep.critical(pts, start)
    assert (c["mult"], c["lr"], c["never_fell"], c["below_at_picked"], c["recovers"]) == (10, 1e-4, False, False, False)
    # the grid order does not matter, and a lr back above the start after a fall does not move the critical lr
    c = rep.critical(list(reversed(pts[:3])) + [(31.6, 3.16e-4, 0.2), (100, 1e-3, 0.35)], start)
    assert c["mult"] == 10 and c["recovers"]
    assert "back above" in rep.critical_text(c, 100)[1]
    # exactly at the start counts as stable
    c = rep.critical([(1, 1e-5, 0.5), (10, 1e-4, 0.30)], start)
    assert c["never_fell"] and c["mult"] == 10 and rep.critical_text(c, 10) == ("≥ 0.0001", "≥ 10× (never fell below)")
    c = rep.critical([(1, 1e-5, 0.29), (10, 1e-4, 0.5)], start)
    assert c["below_at_picked"] and c["mult"] is None and c["recovers"]


def test_onset_and_the_gap_row_before_it():
    start = 0.3
    assert rep.onset_step(curve(0.3, 0.4, 0.35, 0.29, 0.1), start) == 30
    assert rep.onset_step(curve(0.3, 0.4, 0.3), start) is None  # equal to the start is not below it
    gap = [{"step": s, "gap_gauge": s / 10, "gap_eta": 1.0} for s in (5, 10, 15, 20, 25, 30)]
    assert rep.gap_at(gap, 30)["step"] == 30  # that step's update precedes its evaluation
    assert rep.gap_at(gap, 29)["step"] == 25
    assert rep.gap_at(gap, 4) is None


def run(final_curve, gap_gauges, wall=1.0):
    steps = [s for s, _, _ in final_curve if s > 0]
    n = steps[-1]
    return {"curve": final_curve, "final_greedy": final_curve[-1][2], "wall_s": wall,
            "series": {"grad_norm": [1.0] * n, "grad_norm_pos": [1.0] * n, "grad_norm_neg": [1.0 + i / n for i in range(n)]},
            "gap": [{"step": s, "gap_gauge": g, "gap_alignment": 0.5, "gap_eta": 0.1 * g} for s, g in gap_gauges]}


def test_summarise_setting_collapsed_and_stable_runs():
    start = 0.3
    gauges = [(5, 0.1), (10, 0.2), (15, 0.3), (20, 0.4)]
    runs = {
        "A": {1.0: {0: run(curve(0.3, 0.4, 0.45, every=10), gauges), 1: run(curve(0.3, 0.42, 0.44, every=10), gauges)},
              10.0: {0: run(curve(0.3, 0.35, 0.1, every=10), [(5, 2.0), (10, 3.0), (15, 9.0), (20, 9.0)]),
                     1: run(curve(0.3, 0.33, 0.31, every=10), [(5, 0.5), (10, 0.6), (15, 0.7), (20, 0.8)])}},
        "B": {1.0: {0: run(curve(0.3, 0.2, 0.25, every=10), gauges), 1: run(curve(0.3, 0.5, 0.1, every=10), gauges)},
              10.0: {0: run(curve(0.3, 0.2, 0.2, every=10), gauges), 1: run(curve(0.3, 0.2, 0.2, every=10), gauges)}},
    }
    lrs = {"A": {1.0: 1e-5, 10.0: 1e-4}, "B": {1.0: 3e-6, 10.0: 3e-5}}
    s = rep.summarise_setting(runs, lrs, start)
    a10 = s["methods"]["A"]["lrs"]["10"]
    assert [c["seed"] for c in a10["collapsed"]] == [0]
    assert a10["collapsed"][0]["onset_step"] == 20 and a10["collapsed"][0]["gap_step"] == 20
    assert a10["onset"]["gap_gauge"] == 9.0
    # the comparison: A's seed 1 at 10x (B's runs at 10x all collapsed), read at the onset step 20
    assert a10["stable_ref"]["n"] == 1 and a10["stable_ref"]["gap_gauge"] == 0.8
    assert a10["median_gauge"] == pytest.approx((0.8 + 2.0) / 2)  # over both seeds' measured steps
    # A at 10x: seed mean (0.1 + 0.31) / 2 < 0.3, so its critical lr is the picked one
    assert s["methods"]["A"]["critical"]["mult"] == 1.0 and not s["methods"]["A"]["critical"]["never_fell"]
    # B: seed-mean 0.175 < 0.3 at its picked lr already; seed 0 first drops at step 10
    assert s["methods"]["B"]["critical"]["below_at_picked"]
    b1 = s["methods"]["B"]["lrs"]["1"]
    assert {c["seed"]: c["onset_step"] for c in b1["collapsed"]} == {0: 10, 1: 20}
    assert b1["late_over_early_neg"][0] > 1.5 and b1["late_over_early_pos"][0] == pytest.approx(1.0)


def test_plateau_step():
    rising = curve(0.3, 0.35, 0.40, 0.45, 0.50, 0.52, 0.51, 0.52, 0.53, 0.52)
    assert rep.plateau_step(rising, 0.03) == 50
    assert rep.plateau_step(curve(0.3, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65), 0.03) is None


@pytest.mark.slow
def test_stability_map_smoke(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import stability_map

    write_pairs(tmp_path / "pairs.jsonl")
    preset = tmp_path / "fast.yaml"
    rm = {**FAST["rm"], "pairs": {**FAST["rm"]["pairs"], "source": "file", "path": str(tmp_path / "pairs.jsonl")}}
    preset.write_text(yaml.safe_dump({**FAST, "rm": rm}))
    doc, img, out = tmp_path / "doc.md", tmp_path / "img", tmp_path / "map"
    argv = ["--out", str(out), "--doc", str(doc), "--img", str(img), "--methods", "LCO-KLD,GRPO", "--mults", "1,100",
            "--seeds", "0", "--steps", "3", "--eval-every", "1", "--pilot-steps", "0", "--rollouts", "8", "--gap-every", "1",
            "--base-preset", str(preset), "--preset", str(preset)]
    stability_map.main(argv)
    summary = json.loads((out / "tiny/summary.json").read_text())
    dense = summary["settings"]["dense"]
    assert set(dense["methods"]) == {"LCO-KLD", "GRPO"} and summary["settings"]["verifier"]["methods"] == {}
    start = dense["start"]
    for m, d in dense["methods"].items():
        assert set(d["lrs"]) == {"1", "100"}
        assert d["lrs"]["100"]["lr"] == pytest.approx(100 * stability_map.PICKED[m])
        # the critical lr, recomputed from the per-seed final accuracies
        means = {x: d["lrs"][x]["final_mean"] for x in ("1", "100")}
        expect = None if means["1"] < start else (1.0 if means["100"] < start else 100.0)
        assert d["critical"]["mult"] == expect
        assert d["lrs"]["1"]["late_over_early_neg"] is not None
        assert d["lrs"]["1"]["gap_measured"]  # (the gauge itself needs J > 0, which this 6-step SFT need not reach)
    text = doc.read_text()
    assert text.startswith("# ") and "<!-- BEGIN GENERATED -->" in text and "<!-- END GENERATED -->" in text
    assert "critical lr" in text and "| LCO-KLD | 3e-06 |" in text
    assert (img / "stability_map.png").stat().st_size > 0
    # resumable: a second invocation trains nothing and rewrites the same block once
    stability_map.main(argv)
    assert doc.read_text().count("<!-- BEGIN GENERATED -->") == 1


def test_gauge_agreement_splits_points_by_outcome():
    """Points without a gauge are left out; a point exactly at the start is stable; counts above the threshold."""
    lr = lambda final, gauge: {"final_mean": final, "median_gauge": gauge}  # noqa: E731
    setting = {"start": 0.3, "methods": {
        "A": {"lrs": {"1": lr(0.35, 0.1), "10": lr(0.30, 0.9), "100": lr(0.05, 4.0)}},
        "B": {"lrs": {"1": lr(0.32, None), "10": lr(0.20, 0.5), "100": lr(0.0, 12.0)}}}}
    a = rep.gauge_agreement(setting)
    assert a["stable"] == {"n": 2, "above": 0, "min": 0.1, "median": 0.5, "max": 0.9}
    assert a["collapsed"] == {"n": 3, "above": 2, "min": 0.5, "median": 4.0, "max": 12.0}
    text = "\n".join(rep.agreement_markdown(a))
    assert "| stable | 2 | 0 | 0.1 | 0.5 | 0.9 |" in text and "| collapsed | 3 | 2 | 0.5 | 4 | 12 |" in text
