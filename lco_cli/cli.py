"""The `lco` command group. One module per subcommand under `lco_cli/commands/`, registered in
COMMANDS and imported only when that command runs, so `lco --help` and `lco validate` start in a
fraction of a second (no torch, transformers or datasets import). User errors become one message
and an exit code (README "Exit codes"), never a traceback.

Exit codes: 0 success; 1 failure (including an unreadable state file or an unwritable run dir);
2 invalid preset, override, data file or usage; 3 missing prerequisite (path, stage output, hub
id); 128 + signal when interrupted: 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP.
"""
from __future__ import annotations

import importlib
import os
import sys

import click

from lco_cli.errors import Interrupted, LcoError

# Subcommand -> one-line help shown by `lco --help` without importing the command's module.
COMMANDS = {
    "run": "Run the pipeline (sft, rm, train, eval); skips done stages and resumes interrupted ones.",
    "sft": "Supervised warm-up (SFT) into RUN_DIR/sft/.",
    "rm": "Train the DPO reward model φ_DPO into RUN_DIR/rm/.",
    "train": "Policy training (LCO or a baseline) into RUN_DIR/train/.",
    "eval": "Evaluate policies on benchmarks into RUN_DIR/eval/ (pass@1 ± stderr).",
    "validate": "Validate a preset and overrides; reports every problem at once.",
    "presets": "List the bundled presets, or show one resolved.",
    "report": "Plots and a markdown summary of a run into RUN_DIR/report/.",
    "compare": "One table, policies × benchmarks, over several run directories.",
}


def report_error(exc: LcoError) -> None:
    click.secho(f"error: {exc.message}", fg="red", err=True)
    for line in exc.details:
        click.echo(f"  - {line}", err=True)


def report_interrupt(exc: KeyboardInterrupt) -> int:
    signum = getattr(exc, "signum", 2)
    name = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
    note = getattr(exc, "note", "") or "stopped"
    click.echo(f"interrupted ({name}): {note}", err=True)
    return 128 + signum


class LcoGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"lco_cli.commands.{name}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LcoError as exc:
            report_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            ctx.exit(report_interrupt(exc))
        except OSError as exc:
            if not unwritable(exc):
                raise
            click.secho(f"error: cannot write {exc.filename}: {exc.strerror} (choose another --run-dir, or fix its "
                        "permissions / free space)", fg="red", err=True)
            ctx.exit(1)


def unwritable(exc: OSError) -> bool:
    import errno

    return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR) and exc.filename is not None


@click.group(cls=LcoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lco", prog_name="lco")
def cli() -> None:
    """lco — RL post-training of language models with Logits Convex Optimization.

    \b
    Exit codes: 0 success; 1 failure; 2 invalid preset, override, data file or usage;
    3 missing prerequisite (path, stage output, hub id); 130 / 143 / 129 interrupted by
    SIGINT / SIGTERM / SIGHUP (the stage is marked failed + interrupted and resumes from its
    last checkpoint on the next run)."""
    from lco_cli.runtime import signals

    quiet_libraries()
    signals.install()
    if os.environ.get("RANK", "0") not in ("", "0"):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - one summary per run: rank 0 prints it


# Warnings the libraries print on every run that a user can do nothing about.
KNOWN_WARNINGS = (
    r".*`past_key_values` is deprecated.*",
    r".*TypedStorage is deprecated.*",
    r".*torch\.utils\._pytree\._register_pytree_node is deprecated.*",
)


def quiet_libraries() -> None:
    """Our own progress and log lines replace the libraries' per-call bars and notices (set
    through the environment, so nothing heavy is imported here)."""
    import logging
    import warnings

    for key, value in {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                       "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
        os.environ.setdefault(key, value)
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("accelerate", "datasets", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    sys.exit(cli.main(prog_name="lco", standalone_mode=True))
