"""Arguments every stage command shares: [PRESET] [--run-dir DIR] [--force] [KEY=VALUE ...]."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from lco_cli.config import Preset, load
from lco_cli.errors import ConfigError
from lco_cli.runtime.rundir import RunDir

FORCE_META = "lco.force"  # click context meta key set by a stage command's --force flag


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
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(FORCE_META):
        run.force.add(ctx.info_name)
    return Context(name, preset, run, overrides)


def warn_unread_keys(preset: Preset) -> None:
    """A warning line per `train` key the preset sets but the chosen algorithm's loss does not read."""
    from lco_cli.config.loader import unread_keys
    from lco_cli.runtime.console import warn

    for message in unread_keys(preset):
        warn(message)


def run_dir_option(fn):
    return click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                        help="Run directory (default: runs/<preset name>).")(fn)


def _remember_force(ctx: click.Context, _param, value: bool) -> None:
    ctx.meta[FORCE_META] = value


def stage_options(fn):
    """Decorate a stage command with PRESET/KEY=VALUE arguments, --run-dir and --force."""
    fn = click.argument("args", nargs=-1, metavar="[PRESET] [KEY=VALUE]...")(fn)
    fn = click.option("--force", is_flag=True, expose_value=False, callback=_remember_force,
                      help="Rerun even though the stage is done with a different config (the finished output "
                           "is replaced only when the rerun succeeds).")(fn)
    return run_dir_option(fn)
