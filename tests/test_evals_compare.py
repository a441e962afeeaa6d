"""`lco compare --table paper` and `lco report` on fixture run directories with the new metrics."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import invoke


def write_run(root, algo, objective, results, seeds=None):
    """A run folder as `lco run` leaves it: config.yaml and eval/results.json (one seed) or
    seed-*/config.yaml and aggregate.json (several)."""
    root.mkdir(parents=True)
    cfg = yaml.safe_dump({"train": {"algo": algo, "objective": objective}})
    if seeds:
        for s in seeds:
            (root / f"seed-{s}").mkdir()
            (root / f"seed-{s}" / "config.yaml").write_text(cfg)
        (root / "aggregate.json").write_text(json.dumps({"seeds": seeds, "results": results}))
    else:
        (root / "config.yaml").write_text(cfg)
        (root / "eval").mkdir()
        (root / "eval" / "results.json").write_text(json.dumps({"results": results}))


def row(policy, bench, metric, mean, err, std=False):
    return {"policy": policy, "benchmark": bench, "metric": metric, "mean": mean, ("std" if std else "stderr"): err,
            "n_problems": 805}


def test_paper_table_layout(workdir, runner):
    base = [row("rm", "alpacaeval", "win_rate", 0.10, 0.01, True), row("pi_star", "alpacaeval", "win_rate", 0.30, 0.02, True),
            row("sft", "alpacaeval", "win_rate", 0.05, 0.01, True)]
    write_run(workdir / "lco", "lco", "kld", base + [row("train", "alpacaeval", "win_rate", 0.25, 0.02, True),
                                                     row("train", "alpacaeval", "lc_win_rate", 0.27, 0.03, True)], seeds=[0, 1])
    write_run(workdir / "grpo", "grpo", "kld", base + [row("train", "alpacaeval", "win_rate", 0.20, 0.015),
                                                       row("train", "alpacaeval", "lc_win_rate", 0.29, 0.016)])
    res = invoke(runner, "compare", "lco", "grpo", "--table", "paper", "--markdown")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "| method | alpacaeval WR | alpacaeval LC-WR |"
    assert [ln.split(" | ")[0].lstrip("| ") for ln in lines[2:7]] == ["φ_DPO", "π*", "SFT", "LCO-KLD", "GRPO"]
    table = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines[2:7]}
    assert "**30.0 ± 2.0**" in table["π*"] and "<u>25.0 ± 2.0</u>" in table["LCO-KLD"]  # WR: best, second
    assert "**29.0 ± 1.6†**" in table["GRPO"] and "<u>27.0 ± 3.0</u>" in table["LCO-KLD"]  # LC-WR; † = one seed
    assert table["SFT"].count("**") == 0 and "<u>" not in table["SFT"]
    assert "mean ± std over seeds" in res.output and "† one seed: mean ± stderr" in res.output
    data = json.loads(invoke(runner, "compare", "lco", "grpo", "--table", "paper", "--json").output)
    assert data["labels"] == ["φ_DPO", "π*", "SFT", "LCO-KLD", "GRPO"]


def test_default_table_and_report_show_reward_metrics(workdir, runner):
    write_run(workdir / "run", "lco", "mse", [row("sft", "arith", "pass@1", 0.4, 0.02),
                                              row("sft", "reward", "reward/a", 1.234, 0.1),
                                              row("sft", "mmlu", "accuracy", 0.5, 0.01)])
    md = invoke(runner, "compare", "run", "--markdown").output
    assert "| policy | arith | reward reward/a | mmlu acc |" in md and "| sft | 40.0 ± 2.0 | 1.234 ± 0.100 | 50.0 ± 1.0 |" in md
    res = invoke(runner, "report", "run")
    assert res.exit_code == 0, res.output
    report = (workdir / "run/report/report.md").read_text()
    assert "reward reward/a" in report and re.search(r"\| sft \| 40\.0 ± 2\.0 \| 1\.234", report)
    assert (workdir / "run/report/eval.png").read_bytes()[:4] == b"\x89PNG"


def test_aggregate_seeds_keeps_metrics_apart():
    from lco_cli.recipes.compare import aggregate_seeds

    per_seed = {0: [row("train", "alpacaeval", "win_rate", 0.2, 0.01), row("train", "alpacaeval", "lc_win_rate", 0.3, 0.01)],
                1: [row("train", "alpacaeval", "win_rate", 0.4, 0.01), row("train", "alpacaeval", "lc_win_rate", 0.5, 0.01)]}
    out = {r["metric"]: r for r in aggregate_seeds(per_seed)["results"]}
    assert set(out) == {"win_rate", "lc_win_rate"}
    # mean and sample std (n-1) of two values: (a+b)/2 and |a-b|/sqrt(2); 1e-12: float rounding only
    assert out["win_rate"]["mean"] == pytest.approx(0.3, abs=1e-12) and out["win_rate"]["std"] == pytest.approx(0.2 / 2 ** 0.5, abs=1e-12)
    assert out["lc_win_rate"]["mean"] == pytest.approx(0.4, abs=1e-12) and out["lc_win_rate"]["n_seeds"] == 2
