"""`lco eval`: every policy on every benchmark into RUN_DIR/eval/ (see recipes/eval.py)."""
from __future__ import annotations

import json

import click

from lco_cli.commands.common import resolve, stage_options
from lco_cli.recipes.compare import results_table
from lco_cli.recipes.eval import run_eval

__all__ = ["command", "run_eval"]


@click.command(help="Evaluate policies on benchmarks into RUN_DIR/eval/ (pass@1, win rates, rewards, accuracy).")
@stage_options
@click.option("--json", "as_json", is_flag=True, help="Print results.json on stdout.")
def command(args, run_dir, as_json):
    ctx = resolve(args, run_dir)
    payload = run_eval(ctx)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        results_table({ctx.run.path.name: payload["results"]}, stderr_label="stderr").print()
