"""`lco train`: parse the stage arguments, run the train recipe (lco_cli.recipes.train)."""
from __future__ import annotations

import click

from lco_cli.commands.common import resolve, stage_options, warn_unread_keys


@click.command(help="Policy training (LCO or a baseline) into RUN_DIR/train/.")
@stage_options
def command(args, run_dir):
    ctx = resolve(args, run_dir)
    from lco_cli.recipes.train import run_train

    warn_unread_keys(ctx.preset)
    result = run_train(ctx)
    if result.get("heldout_acc") is not None:
        click.echo(f"train: held-out greedy accuracy {result['heldout_acc']:.3f}")
    click.echo(f"train: done -> {ctx.run.stage('train').final}")
