"""The `lco` command group. One module per subcommand under `lco_cli/commands/`, registered in
COMMANDS; user errors become one message and an exit code (docs/architecture.md), never a traceback."""
from __future__ import annotations

import importlib
import sys

import click

from lco_cli.errors import LcoError

# One line per subcommand: adding a stage is one module plus one entry here.
COMMANDS = ["run", "sft", "rm", "train", "eval", "validate", "presets", "report", "compare"]


def report_error(exc: LcoError) -> None:
    click.secho(f"error: {exc.message}", fg="red", err=True)
    for line in exc.details:
        click.echo(f"  - {line}", err=True)


class LcoGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LcoError as exc:
            report_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: the stage resumes from its last checkpoint on the next run", err=True)
            ctx.exit(130)


@click.group(cls=LcoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lco", prog_name="lco")
def cli() -> None:
    """lco — RL post-training of language models with Logits Convex Optimization."""
    quiet_libraries()


def quiet_libraries() -> None:
    """Our own progress and log lines replace the libraries' per-call bars and notices."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


for _name in COMMANDS:
    try:
        _mod = importlib.import_module(f"lco_cli.commands.{_name}")
    except ModuleNotFoundError as _exc:  # a subcommand not written yet is simply not listed
        if _exc.name != f"lco_cli.commands.{_name}":
            raise
        continue
    cli.add_command(_mod.command, _name)


def main() -> None:
    sys.exit(cli.main(prog_name="lco", standalone_mode=True))
