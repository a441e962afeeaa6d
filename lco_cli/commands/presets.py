"""`lco presets` lists the bundled presets; `lco presets show NAME` prints one resolved."""
from __future__ import annotations

import click
import yaml

from lco_cli.config import bundled_presets, dump_yaml, load


@click.group(invoke_without_command=True, help="List bundled presets (name and description).")
@click.pass_context
def command(ctx):
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("preset", "description", box=None)
    for name, path in sorted(bundled_presets().items()):
        data = yaml.safe_load(path.read_text()) or {}
        table.add_row(name, str(data.get("description", "")))
    Console(width=120).print(table)


@command.command("show", help="Print a preset fully resolved (defaults + file + overrides).")
@click.argument("name")
@click.argument("overrides", nargs=-1)
def show(name, overrides):
    _, preset = load(name, list(overrides))
    click.echo(dump_yaml(preset), nl=False)
