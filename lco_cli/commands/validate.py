"""`lco validate`: check a whole preset (every problem at once) before anyone spends GPU hours."""
from __future__ import annotations

import click

from lco_cli.config import config_hash, to_dict
from lco_cli.runtime.models import benchmark_only_warning, check_policy_spec
from lco_cli.commands.common import split_args


@click.command(help="Validate a preset and overrides; reports every problem at once (exit 2 if any).")
@click.argument("args", nargs=-1, metavar="[PRESET] [KEY=VALUE]...")
def command(args):
    from lco_cli.config import load

    preset_arg, overrides = split_args(args)
    name, preset = load(preset_arg, overrides)
    check_policy_spec(preset.model.policy)
    if warning := benchmark_only_warning(preset.model.policy):
        click.echo(warning, err=True)
    click.echo(f"{name}: valid (config hash {config_hash(to_dict(preset))})")
