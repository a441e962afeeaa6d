"""`lco compare RUN_DIR [RUN_DIR ...]`: one table of policies × benchmarks (see recipes/compare.py)."""
from __future__ import annotations

import json

import click

from lco_cli.recipes.compare import load_runs, paper_table, results_table


@click.command(help="Compare runs: one table of policies × benchmarks.")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable rows on stdout.")
@click.option("--markdown", "as_markdown", is_flag=True, help="A Markdown table on stdout.")
@click.option("--table", "layout", type=click.Choice(["runs", "paper"]), default="runs", show_default=True,
              help="'paper': methods as rows (φ_DPO, π*, SFT, then each run's algorithm), best bold, second underlined.")
def command(run_dirs, as_json, as_markdown, layout):
    table = paper_table(list(run_dirs)) if layout == "paper" else results_table(load_runs(list(run_dirs)))
    if as_json:
        click.echo(json.dumps(table.as_json(), indent=2))
    elif as_markdown:
        click.echo(table.markdown(), nl=False)
    else:
        table.print()
