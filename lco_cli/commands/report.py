"""`lco report RUN_DIR`: report.md (tables) and titled plots (see recipes/report.py, docs/results.md)."""
from __future__ import annotations

from pathlib import Path

import click

from lco_cli.recipes.report import write_report


@click.command(help="Tables (report.md) and titled plots of a run into RUN_DIR/report/.")
@click.argument("run_dir", type=click.Path(file_okay=False))
def command(run_dir):
    out = write_report(Path(run_dir))
    click.echo(f"report: {out / 'report.md'}")
    for png in sorted(out.glob("*.png")):
        click.echo(f"  {png}")
