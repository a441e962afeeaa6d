"""The results tables behind `lco eval`, `lco run`, `lco compare` and `lco report`.

Single-seed runs show `mean ± stderr` (eval/results.json); multi-seed runs (`lco run --seeds`)
show `mean ± std` across seeds (aggregate.json), as the paper's tables do.

Two layouts:
- `ResultsTable` (default): one row per (run, policy), one column per benchmark metric.
- `PaperTable` (`--table paper`): the layout of the paper's Tables 1–6 — rows φ_DPO, π*, SFT, then
  one row per run's trained policy labelled by its `train.algo` / `objective`; columns are the
  benchmark metrics; the best value of each column in bold and the second underlined
  (`--markdown`); cells measured on one seed carry a † and mean ± stderr over problems.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lco_cli.errors import MissingArtifactError

#: Metrics stored as fractions and shown in percent; any other metric (e.g. `reward/<name>`) is
#: shown as is.
PERCENT_METRICS = ("pass@1", "win_rate", "lc_win_rate", "accuracy")

#: Row labels of the evaluation-only and reference policies in the paper's tables.
PAPER_BASELINES = {"rm": "φ_DPO", "pi_star": "π*", "sft": "SFT", "base": "base"}

#: Short column names for metrics in the paper layout.
METRIC_LABELS = {"win_rate": "WR", "lc_win_rate": "LC-WR", "accuracy": "acc", "pass@1": "pass@1"}


def metric_of(result: dict) -> str:
    """Rows written before metrics existed are pass@1."""
    return result.get("metric", "pass@1")


def format_value(metric: str, value: float) -> str:
    return f"{100 * value:.1f}" if metric in PERCENT_METRICS else f"{value:.3f}"


@dataclass
class Column:
    benchmark: str
    metric: str
    label: str


def columns_of(rows: list[dict]) -> list[Column]:
    """One column per (benchmark, metric); the metric is named only where it is not pass@1 or
    where a benchmark has several."""
    pairs = list(dict.fromkeys((r["benchmark"], r["metric"]) for r in rows))
    per_bench: dict[str, int] = {}
    for b, _ in pairs:
        per_bench[b] = per_bench.get(b, 0) + 1
    cols = []
    for b, m in pairs:
        plain = m == "pass@1" and per_bench[b] == 1
        cols.append(Column(b, m, b if plain else f"{b} {METRIC_LABELS.get(m, m)}"))
    return cols


def units_line(rows: list[dict]) -> str:
    kinds = " / ".join(sorted({r["err_kind"] for r in rows}))
    metrics = {r["metric"] for r in rows}
    unit = "pass@1 (%)" if metrics == {"pass@1"} else "percent for pass@1/WR/LC-WR/accuracy, raw reward otherwise"
    return f"{unit}, mean ± {kinds}"


@dataclass
class ResultsTable:
    rows: list[dict]          # {"run", "policy", "benchmark", "metric", "mean", "err", "err_kind", ...}

    def benchmarks(self) -> list[str]:
        return [c.label for c in columns_of(self.rows)]

    def row_keys(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((r["run"], r["policy"]) for r in self.rows))

    def find(self, run: str, policy: str, col: Column) -> dict | None:
        for r in self.rows:
            if (r["run"], r["policy"], r["benchmark"], r["metric"]) == (run, policy, col.benchmark, col.metric):
                return r
        return None

    def cell(self, run: str, policy: str, col: Column) -> str:
        r = self.find(run, policy, col)
        if r is None:
            return "–"
        return f"{format_value(r['metric'], r['mean'])} ± {format_value(r['metric'], r['err'])}"

    def _label(self, run: str, policy: str) -> str:
        return policy if len({r for r, _ in self.row_keys()}) == 1 else f"{run}/{policy}"

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        cols = columns_of(self.rows)
        table = Table(title=units_line(self.rows))
        table.add_column("policy")
        for c in cols:
            table.add_column(c.label, justify="right")
        for run, pol in self.row_keys():
            table.add_row(self._label(run, pol), *(self.cell(run, pol, c) for c in cols))
        Console(width=max(100, 20 * (len(cols) + 1))).print(table)

    def markdown(self) -> str:
        cols = columns_of(self.rows)
        head = "| policy | " + " | ".join(c.label for c in cols) + " |"
        sep = "|---|" + "---:|" * len(cols)
        body = ["| " + self._label(run, pol) + " | " + " | ".join(self.cell(run, pol, c) for c in cols) + " |"
                for run, pol in self.row_keys()]
        return "\n".join([units_line(self.rows), "", head, sep, *body]) + "\n"

    def as_json(self) -> dict:
        return {"rows": self.rows}


def results_table(results_by_run: dict[str, list[dict]], stderr_label: str = "stderr") -> ResultsTable:
    rows = []
    for run, results in results_by_run.items():
        for r in results:
            err_kind = "std" if "std" in r else stderr_label
            rows.append({"run": run, "policy": r["policy"], "benchmark": r["benchmark"], "metric": metric_of(r),
                         "mean": r["mean"], "err": r.get("std", r.get("stderr", 0.0)), "err_kind": err_kind,
                         "n_problems": r.get("n_problems"), "k": r.get("k"), "n_seeds": r.get("n_seeds", 1)})
    return ResultsTable(rows)


def aggregate_seeds(per_seed: dict[int, list[dict]]) -> dict:
    """Mean ± std (sample std, n-1) across seeds of each policy × benchmark × metric — the
    multi-seed `aggregate.json`. Keyed by metric too: AlpacaEval's WR and LC-WR, or the reward
    models of one benchmark, must not be averaged together."""
    cells: dict[tuple[str, str, str], list[float]] = {}
    for results in per_seed.values():
        for r in results:
            cells.setdefault((r["policy"], r["benchmark"], metric_of(r)), []).append(r["mean"])
    out = []
    for (pol, bench, metric), vals in cells.items():
        m = sum(vals) / len(vals)
        sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
        out.append({"policy": pol, "benchmark": bench, "metric": metric, "mean": m, "std": sd, "n_seeds": len(vals),
                    "per_seed": vals})
    return {"seeds": sorted(per_seed), "results": out}


def load_run_results(run_dir: Path) -> list[dict]:
    """aggregate.json (multi-seed: mean ± std across seeds) or eval/results.json (mean ± stderr)."""
    agg = run_dir / "aggregate.json"
    if agg.exists():
        return json.loads(agg.read_text())["results"]
    res = run_dir / "eval" / "results.json"
    if not res.exists():
        raise MissingArtifactError(f"no evaluation results in {run_dir}: expected {res} (run `lco eval`) or {agg}")
    return json.loads(res.read_text())["results"]


def load_runs(run_dirs: list[str]) -> dict[str, list[dict]]:
    """Results per run; a run name that repeats is replaced by its full path."""
    by_run: dict[str, list[dict]] = {}
    for d in run_dirs:
        path = Path(d)
        if not path.is_dir():
            raise MissingArtifactError(f"run directory not found: {path}")
        by_run[path.name if path.name not in by_run else str(path)] = load_run_results(path)
    return by_run


# --------------------------------------------------------------------------- the paper's layout


def method_label(run_dir: Path) -> str:
    """'LCO-KLD', 'GRPO', ... from the run's resolved config (a seed folder's for multi-seed runs)."""
    candidates = [run_dir / "config.yaml", *sorted(run_dir.glob("seed-*/config.yaml"))]
    for cfg_path in candidates:
        if cfg_path.is_file():
            train = (yaml.safe_load(cfg_path.read_text()) or {}).get("train", {})
            algo = str(train.get("algo", "train"))
            return f"LCO-{str(train.get('objective', '')).upper()}" if algo == "lco" else algo.upper()
    return run_dir.name


@dataclass
class PaperTable:
    """Methods × benchmark metrics; `cells[label][column label] = result row`."""

    labels: list[str]
    columns: list[Column]
    cells: dict[str, dict[str, dict]] = field(default_factory=dict)

    def ranks(self, col: Column) -> dict[str, int]:
        """Label -> 0 (best) or 1 (second); higher is better for every metric lco reports."""
        scored = sorted(((self.cells[lab][col.label]["mean"], lab) for lab in self.labels
                         if col.label in self.cells[lab]), reverse=True)
        return {lab: i for i, (_, lab) in enumerate(scored[:2])}

    def text(self, label: str, col: Column) -> str:
        r = self.cells[label].get(col.label)
        if r is None:
            return "–"
        dagger = "" if r["err_kind"] == "std" else "†"
        return f"{format_value(r['metric'], r['mean'])} ± {format_value(r['metric'], r['err'])}{dagger}"

    def footnote(self) -> str:
        kinds = {r["err_kind"] for cells in self.cells.values() for r in cells.values()}
        notes = []
        if "std" in kinds:
            notes.append("mean ± std over seeds")
        if kinds - {"std"}:
            notes.append("† one seed: mean ± stderr over problems")
        return "; ".join(notes) + ". " + units_line([r for c in self.cells.values() for r in c.values()]) + "."

    def markdown(self) -> str:
        head = "| method | " + " | ".join(c.label for c in self.columns) + " |"
        sep = "|---|" + "---:|" * len(self.columns)
        body = []
        ranks = {c.label: self.ranks(c) for c in self.columns}
        for lab in self.labels:
            cells = []
            for c in self.columns:
                txt, rank = self.text(lab, c), ranks[c.label].get(lab)
                cells.append(f"**{txt}**" if rank == 0 else f"<u>{txt}</u>" if rank == 1 else txt)
            body.append(f"| {lab} | " + " | ".join(cells) + " |")
        return "\n".join([head, sep, *body, "", self.footnote()]) + "\n"

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(caption=self.footnote())
        table.add_column("method")
        for c in self.columns:
            table.add_column(c.label, justify="right")
        ranks = {c.label: self.ranks(c) for c in self.columns}
        for lab in self.labels:
            styled = []
            for c in self.columns:
                rank = ranks[c.label].get(lab)
                style = "bold" if rank == 0 else "underline" if rank == 1 else ""
                styled.append(f"[{style}]{self.text(lab, c)}[/{style}]" if style else self.text(lab, c))
            table.add_row(lab, *styled)
        Console(width=max(100, 22 * (len(self.columns) + 1))).print(table)

    def as_json(self) -> dict:
        return {"labels": self.labels, "columns": [c.label for c in self.columns],
                "cells": {lab: {k: {"mean": r["mean"], "err": r["err"], "err_kind": r["err_kind"]}
                                for k, r in cells.items()} for lab, cells in self.cells.items()}}


def paper_table(run_dirs: list[str]) -> PaperTable:
    """φ_DPO, π*, SFT (from the first run that has them: runs compared in one table share their
    SFT and RM stages), then each run's `train` policy under its method label."""
    by_run = load_runs(run_dirs)
    paths = dict(zip(by_run, (Path(d) for d in run_dirs)))
    table = results_table(by_run)
    cols = columns_of(table.rows)
    cells: dict[str, dict[str, dict]] = {}
    baseline_rows: dict[str, dict[str, dict]] = {}
    method_rows: dict[str, dict[str, dict]] = {}
    for run, pol in table.row_keys():
        if pol in PAPER_BASELINES:
            label, target = PAPER_BASELINES[pol], baseline_rows
            if label in target:
                continue
        else:
            label, target = method_label(paths[run]) if pol == "train" else f"{run}/{pol}", method_rows
            if label in target:
                label = f"{label} ({run})"
        target[label] = {c.label: r for c in cols if (r := table.find(run, pol, c)) is not None}
    order = [PAPER_BASELINES[k] for k in ("rm", "pi_star", "sft", "base")]
    labels = [lab for lab in order if lab in baseline_rows] + list(method_rows)
    cells.update(baseline_rows)
    cells.update(method_rows)
    return PaperTable(labels, cols, cells)
