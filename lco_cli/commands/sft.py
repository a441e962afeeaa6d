"""`lco sft`: parse the stage arguments, run the SFT recipe (lco_cli.recipes.sft)."""
from __future__ import annotations

import click

from lco_cli.commands.common import resolve, stage_options


@click.command(help="Supervised warm-up (SFT) into RUN_DIR/sft/.")
@stage_options
def command(args, run_dir):
    ctx = resolve(args, run_dir)
    from lco_cli.recipes.sft import run_sft

    result = run_sft(ctx)
    if result.get("heldout_acc") is not None:
        click.echo(f"sft: held-out greedy accuracy {result['heldout_acc']:.3f} on {result['n_problems']} problems")
    click.echo(f"sft: done -> {ctx.run.stage('sft').final}")
