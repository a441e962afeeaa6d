"""`lco run`: the whole pipeline — sft → rm → train → eval — from one preset (arguments only; the
planner and aggregation live in `lco_cli.recipes.run`).

A stage whose status is done with an unchanged config and unchanged upstream outputs is skipped;
an interrupted stage resumes from its last checkpoint; a stage whose upstream output changed
reruns (the log says why); a done stage whose config changed is refused (exit 2, naming the
changed keys) unless `--force STAGE`. `--seeds 0,1,2` runs the pipeline once per seed into
RUN_DIR/seed-<s>/ and writes RUN_DIR/aggregate.json (mean ± std across seeds).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import click

from lco_cli.config import STAGES
from lco_cli.errors import ConfigError
from lco_cli.commands.common import resolve, run_dir_option, split_args


def _parse_list(text: str | None, allowed=None, what="stage") -> list[str]:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    for s in items:
        if allowed and s not in allowed:
            raise ConfigError(f"--{what}s: unknown {what} '{s}' (known: {', '.join(allowed)})")
    return items


@click.command(help="Run the pipeline (sft, rm, train, eval); skips done stages and resumes interrupted ones.")
@click.argument("args", nargs=-1, metavar="[PRESET] [KEY=VALUE]...")
@run_dir_option
@click.option("--stages", default=",".join(STAGES), show_default=True, help="Comma-separated stages to run, in pipeline order.")
@click.option("--force", "force", multiple=True, help="Rerun this stage (and the ones after it that read it). Repeatable.")
@click.option("--seeds", default=None, help="Comma-separated seeds: one pipeline per seed in RUN_DIR/seed-<s>/ plus aggregate.json.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def command(args, run_dir, stages, force, seeds, as_json):
    from lco_cli.recipes.run import run_pipeline, run_seeds

    ctx = resolve(args, run_dir)
    selected = [s for s in STAGES if s in _parse_list(stages, STAGES)]
    forced = set(_parse_list(",".join(force), STAGES, "force"))
    if not seeds:
        summary = run_pipeline(ctx, selected, forced)
    else:
        try:
            seed_list = [int(s) for s in _parse_list(seeds, what="seed")]
        except ValueError:
            raise ConfigError(f"--seeds: expected comma-separated integers, got '{seeds}'") from None
        summary = run_seeds(ctx, selected, forced, seed_list)
    from lco_cli.recipes.compare import results_table
    from lco_cli.recipes.run import run_summary
    from lco_cli.recipes.summary import NextStep, print_summary
    from lco_cli.runtime.rundir import RunDir

    preset_arg = split_args(args)[0]
    if not seeds:
        rows, steps = run_summary(ctx, preset_arg, summary["stages"], summary["seconds"])
    else:
        per_seed = {seed: run_summary(dataclasses.replace(ctx, run=RunDir(Path(sub["run_dir"]))), preset_arg,
                                      sub["stages"], sub["seconds"])[0] for seed, sub in summary["seeds"].items()}
        steps = [NextStep(shlex.join(["lco", "report", str(ctx.run.path)]), "plots and report.md of the seeds' mean ± std"),
                 NextStep(shlex.join(["lco", "compare", str(ctx.run.path), "OTHER_RUN_DIR"]), "compare with another run")]
    if as_json:
        click.echo(json.dumps({**summary, "next": [dataclasses.asdict(s) for s in steps]}, indent=2))
        return
    if summary["results"]:
        results_table({Path(ctx.run.path).name: summary["results"]}).print()
    if not seeds:
        print_summary(rows, steps, f"run summary: {ctx.run.path}")
        return
    for seed, seed_rows in per_seed.items():
        print_summary(seed_rows, [], f"seed {seed}: {ctx.run.path / f'seed-{seed}'}")
    print_summary([], steps, "")
