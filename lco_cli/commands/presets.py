"""`lco presets` lists the bundled presets; `lco presets show NAME` prints one resolved;
`lco presets accelerate [NAME]` lists / prints the path of a bundled accelerate config."""
from __future__ import annotations

import click
import yaml

from lco_cli.config import bundled_presets, dump_yaml, load
from lco_cli.errors import ConfigError


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


@command.command("accelerate", help="Print the path of a bundled accelerate config (ddp, fsdp, deepspeed_zero3), "
                 "for `accelerate launch --config_file $(lco presets accelerate fsdp) -m lco_cli train PRESET`; "
                 "without NAME, list them.")
@click.argument("name", required=False)
def accelerate(name):
    from lco_cli.launch import DESCRIPTIONS, accelerate_configs

    configs = accelerate_configs()
    if name is None:
        for key, path in configs.items():
            click.echo(f"{key:16} {DESCRIPTIONS.get(key, '')}\n{'':16} {path}")
        return
    if name not in configs:
        raise ConfigError(f"accelerate config '{name}' is not bundled (choose from: {', '.join(configs)})")
    click.echo(str(configs[name]))
