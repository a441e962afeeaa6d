"""`lco compare RUN_DIR [RUN_DIR ...]`: one table, policies × benchmarks.

Single-seed runs show `mean ± stderr` (eval/results.json); multi-seed runs (`lco run --seeds`)
show `mean ± std` across seeds (aggregate.json), as the paper's tables do.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from lco_cli.errors import MissingArtifactError


@dataclass
class ResultsTable:
    rows: list[dict]          # {"run", "policy", "benchmark", "mean", "err", "err_kind", ...}

    def benchmarks(self) -> list[str]:
        return list(dict.fromkeys(r["benchmark"] for r in self.rows))

    def row_keys(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((r["run"], r["policy"]) for r in self.rows))

    def cell(self, run: str, policy: str, bench: str) -> str:
        for r in self.rows:
            if (r["run"], r["policy"], r["benchmark"]) == (run, policy, bench):
                return f"{100 * r['mean']:.1f} ± {100 * r['err']:.1f}"
        return "–"

    def _label(self, run: str, policy: str) -> str:
        return policy if len({r for r, _ in self.row_keys()}) == 1 else f"{run}/{policy}"

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        kinds = sorted({r["err_kind"] for r in self.rows})
        table = Table(title=f"pass@1 (%), mean ± {' / '.join(kinds)}")
        table.add_column("policy")
        for b in self.benchmarks():
            table.add_column(b, justify="right")
        for run, pol in self.row_keys():
            table.add_row(self._label(run, pol), *(self.cell(run, pol, b) for b in self.benchmarks()))
        Console(width=max(100, 20 * (len(self.benchmarks()) + 1))).print(table)

    def markdown(self) -> str:
        head = "| policy | " + " | ".join(self.benchmarks()) + " |"
        sep = "|---|" + "---:|" * len(self.benchmarks())
        body = ["| " + self._label(run, pol) + " | " + " | ".join(self.cell(run, pol, b) for b in self.benchmarks()) + " |"
                for run, pol in self.row_keys()]
        kinds = " / ".join(sorted({r["err_kind"] for r in self.rows}))
        return "\n".join([f"pass@1 (%), mean ± {kinds}", "", head, sep, *body]) + "\n"

    def as_json(self) -> dict:
        return {"rows": self.rows}


def results_table(results_by_run: dict[str, list[dict]], stderr_label: str = "stderr") -> ResultsTable:
    rows = []
    for run, results in results_by_run.items():
        for r in results:
            err_kind = "std" if "std" in r else stderr_label
            rows.append({"run": run, "policy": r["policy"], "benchmark": r["benchmark"], "mean": r["mean"],
                         "err": r.get("std", r.get("stderr", 0.0)), "err_kind": err_kind,
                         "n_problems": r.get("n_problems"), "k": r.get("k"), "n_seeds": r.get("n_seeds", 1)})
    return ResultsTable(rows)


def load_run_results(run_dir: Path) -> list[dict]:
    """aggregate.json (multi-seed: mean ± std across seeds) or eval/results.json (mean ± stderr)."""
    agg = run_dir / "aggregate.json"
    if agg.exists():
        return json.loads(agg.read_text())["results"]
    res = run_dir / "eval" / "results.json"
    if not res.exists():
        raise MissingArtifactError(f"no evaluation results in {run_dir}: expected {res} (run `lco eval`) or {agg}")
    return json.loads(res.read_text())["results"]


@click.command(help="Compare runs: one table of policies × benchmarks.")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable rows on stdout.")
@click.option("--markdown", "as_markdown", is_flag=True, help="A Markdown table on stdout.")
def command(run_dirs, as_json, as_markdown):
    by_run = {}
    for d in run_dirs:
        path = Path(d)
        if not path.is_dir():
            raise MissingArtifactError(f"run directory not found: {path}")
        by_run[path.name if path.name not in by_run else str(path)] = load_run_results(path)
    table = results_table(by_run)
    if as_json:
        click.echo(json.dumps(table.as_json(), indent=2))
    elif as_markdown:
        click.echo(table.markdown(), nl=False)
    else:
        table.print()
