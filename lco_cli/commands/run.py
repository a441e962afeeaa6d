"""`lco run`: the whole pipeline — sft → rm → train → eval — from one preset.

A stage whose status is done with an unchanged config (its section plus model/task/seed) and whose
upstream did not rerun is skipped; an interrupted stage resumes from its last checkpoint; a done
stage whose config changed is refused (exit 2, naming the changed keys) unless `--force STAGE`,
which reruns it and every selected stage after it. `--seeds 0,1,2` runs the pipeline once per seed
into RUN_DIR/seed-<s>/ and writes RUN_DIR/aggregate.json (mean ± std across seeds).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import click

from lco_cli.config import STAGES
from lco_cli.errors import ConfigError
from lco_cli.runtime.rundir import RunDir, atomic_write_json
from lco_cli.runtime.training import stage_config_hash, stage_inputs
from lco_cli.commands.common import Context, resolve, stage_options


def _runner(stage: str):
    from lco_cli.commands import eval as eval_cmd
    from lco_cli.commands import rm
    from lco_cli.commands import sft
    from lco_cli.commands import train

    return {"sft": sft.run_sft, "rm": rm.run_rm, "train": train.run_train, "eval": eval_cmd.run_eval}[stage]


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def changed_keys(status: dict, ctx: Context, stage: str) -> list[str]:
    if not status.get("inputs"):
        return []  # written by an older lco that did not record its inputs
    old = _flatten(status["inputs"])
    new = _flatten(stage_inputs(ctx.preset, stage))
    return sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))


def plan(ctx: Context, stages: list[str], force: set[str]) -> dict[str, str]:
    """Decide per stage: 'skip', 'run' (fresh or resume) — raising on a silent reuse of changed config."""
    decisions, upstream_ran = {}, False
    for stage in stages:
        sd = ctx.run.stage(stage)
        st = sd.status() or {}
        same = st.get("config_hash") == stage_config_hash(ctx.preset, stage)
        if stage in force or upstream_ran:
            decisions[stage] = "run"
        elif sd.is_done() and same:
            decisions[stage] = "skip"
        elif sd.is_done():
            keys = changed_keys(st, ctx, stage)
            raise ConfigError(f"stage '{stage}' is done with a different config (changed: {', '.join(keys) or 'unknown'}); "
                              f"rerun it with --force {stage}, or use another --run-dir")
        else:
            decisions[stage] = "resume" if st.get("state") in ("running", "failed") and same else "run"
        upstream_ran = upstream_ran or decisions[stage] != "skip"
    return decisions


def run_pipeline(ctx: Context, stages: list[str], force: set[str]) -> dict:
    decisions = plan(ctx, stages, force)
    timings = {}
    for stage in stages:
        if decisions[stage] == "skip":
            click.echo(f"run: {stage} already done, skipped", err=True)
            continue
        if decisions[stage] == "run" and ctx.run.stage(stage).status():
            _invalidate(ctx.run, stage)
        click.echo(f"run: {stage} ({decisions[stage]})", err=True)
        t0 = time.time()
        _runner(stage)(ctx)
        timings[stage] = round(time.time() - t0, 1)
    results = ctx.run.path / "eval" / "results.json"
    return {"run_dir": str(ctx.run.path), "stages": decisions, "seconds": timings,
            "results": json.loads(results.read_text())["results"] if results.exists() else []}


def _invalidate(run: RunDir, stage: str) -> None:
    """A forced or upstream-invalidated stage starts clean (its old outputs are not resumable)."""
    sd = run.stage(stage)
    st = sd.status() or {}
    st.update({"state": "failed", "config_hash": None, "error": "invalidated by lco run"})
    atomic_write_json(sd.path / "status.json", st)


def aggregate(per_seed: dict[int, list[dict]]) -> dict:
    """Mean ± std (sample std, n-1) across seeds of each policy × benchmark pass@1."""
    cells: dict[tuple[str, str], list[float]] = {}
    for results in per_seed.values():
        for r in results:
            cells.setdefault((r["policy"], r["benchmark"]), []).append(r["mean"])
    out = []
    for (pol, bench), vals in cells.items():
        m = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        out.append({"policy": pol, "benchmark": bench, "metric": "pass@1", "mean": m, "std": sd, "n_seeds": len(vals),
                    "per_seed": vals})
    return {"seeds": sorted(per_seed), "results": out}


def _parse_list(text: str | None, allowed=None, what="stage") -> list[str]:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    for s in items:
        if allowed and s not in allowed:
            raise ConfigError(f"--{what}s: unknown {what} '{s}' (known: {', '.join(allowed)})")
    return items


@click.command(help="Run the pipeline (sft, rm, train, eval); skips done stages and resumes interrupted ones.")
@stage_options
@click.option("--stages", default=",".join(STAGES), show_default=True, help="Comma-separated stages to run, in pipeline order.")
@click.option("--force", "force", multiple=True, help="Rerun this stage (and invalidate the ones after it). Repeatable.")
@click.option("--seeds", default=None, help="Comma-separated seeds: one pipeline per seed in RUN_DIR/seed-<s>/ plus aggregate.json.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def command(args, run_dir, stages, force, seeds, as_json):
    ctx = resolve(args, run_dir)
    selected = _parse_list(stages, STAGES)
    selected = [s for s in STAGES if s in selected]
    forced = set(_parse_list(",".join(force), STAGES, "force"))
    if not seeds:
        summary = run_pipeline(ctx, selected, forced)
    else:
        try:
            seed_list = [int(s) for s in _parse_list(seeds, what="seed")]
        except ValueError:
            raise ConfigError(f"--seeds: expected comma-separated integers, got '{seeds}'") from None
        per_seed, runs = {}, {}
        for s in seed_list:
            sub = Context(ctx.preset_name, dataclasses.replace(copy.deepcopy(ctx.preset), seed=s),
                          RunDir(ctx.run.path / f"seed-{s}"), ctx.overrides)
            runs[s] = run_pipeline(sub, selected, forced)
            per_seed[s] = runs[s]["results"]
        agg = aggregate(per_seed)
        atomic_write_json(ctx.run.path / "aggregate.json", agg)
        summary = {"run_dir": str(ctx.run.path), "seeds": runs, "results": agg["results"]}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif summary["results"]:
        from lco_cli.recipes.compare import results_table

        results_table({Path(ctx.run.path).name: summary["results"]}).print()
