"""`lco rm`: parse the stage arguments, run the DPO reward-model recipe (lco_cli.recipes.rm)."""
from __future__ import annotations

import click

from lco_cli.commands.common import resolve, stage_options


@click.command(help="Train the DPO reward model φ_DPO into RUN_DIR/rm/.")
@stage_options
def command(args, run_dir):
    ctx = resolve(args, run_dir)
    from lco_cli.recipes.rm import run_rm

    result = run_rm(ctx)
    if result.get("pair_accuracy") is not None:
        click.echo(f"rm: held-out pair accuracy {result['pair_accuracy']:.3f} on {result['n_pairs']} pairs")
    click.echo(f"rm: done -> {ctx.run.stage('rm').final}")
