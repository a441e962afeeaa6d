"""`lco validate`: check a whole preset (every problem at once) before anyone spends GPU hours.

Beyond the schema: every local path the preset names must exist (exit 3 naming the key and the
path; a model path must be a model folder), data files must be readable (exit 2 naming the file
and row), hub ids are checked for their form only — validate never downloads anything."""
from __future__ import annotations

import click

from lco_cli.config import STAGES, config_hash, to_dict
from lco_cli.errors import ConfigError, MissingArtifactError
from lco_cli.runtime.inputs import input_problems
from lco_cli.runtime.models import benchmark_only_warning, check_policy_spec
from lco_cli.commands.common import split_args, warn_unread_keys


@click.command(help="Validate a preset and overrides; reports every problem at once (exit 2 if any).")
@click.argument("args", nargs=-1, metavar="[PRESET] [KEY=VALUE]...")
def command(args):
    from lco_cli.config import load

    preset_arg, overrides = split_args(args)
    name, preset = load(preset_arg, overrides)
    check_policy_spec(preset.model.policy)
    problems = input_problems(preset, STAGES)
    if problems:
        messages = [message for _, message in problems]
        summary = f"{name}: {len(problems)} problem{'s' * (len(problems) > 1)} with the files the preset names"
        if any(code == ConfigError.exit_code for code, _ in problems):
            raise ConfigError(summary, messages)
        raise MissingArtifactError(summary, messages)
    if warning := benchmark_only_warning(preset.model.policy):
        click.echo(warning, err=True)
    warn_unread_keys(preset)
    click.echo(f"{name}: valid (config hash {config_hash(to_dict(preset))})")
