"""Arguments every stage command shares: [PRESET] [--run-dir DIR] [KEY=VALUE ...]."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from lco_cli.config import Preset, load
from lco_cli.errors import ConfigError
from lco_cli.runtime.rundir import RunDir


@dataclass
class Context:
    preset_name: str
    preset: Preset
    run: RunDir
    overrides: list[str]


def split_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """First positional without '=' is the preset; the rest must be KEY=VALUE overrides."""
    preset = None
    rest = list(args)
    if rest and "=" not in rest[0]:
        preset = rest.pop(0)
    for item in rest:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE (e.g. train.beta=0.5)")
    return preset, rest


def resolve(args: tuple[str, ...], run_dir: str | None) -> Context:
    preset_arg, overrides = split_args(args)
    name, preset = load(preset_arg, overrides)
    run = RunDir(Path(run_dir) if run_dir else Path("runs") / preset.name)
    return Context(name, preset, run, overrides)


def stage_options(fn):
    """Decorate a stage command with PRESET/KEY=VALUE arguments and --run-dir."""
    fn = click.argument("args", nargs=-1, metavar="[PRESET] [KEY=VALUE]...")(fn)
    fn = click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                      help="Run directory (default: runs/<preset name>).")(fn)
    return fn
