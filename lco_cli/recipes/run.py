"""The pipeline behind `lco run`: decide per stage (skip, run, resume — or refuse), run the
stages in order, and aggregate several seeds.

A done stage is skipped when its own config and every upstream output it read are unchanged; a
stage whose upstream output changed (or reruns now) reruns, and the log says why. A done stage
whose own config changed is refused (exit 2, naming the keys) unless `--force STAGE`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time

import click

from lco_cli.commands.common import Context, warn_unread_keys
from lco_cli.recipes.compare import aggregate_seeds
from lco_cli.recipes.summary import NextStep, StageSummary, next_steps, summarize_run
from lco_cli.runtime.rundir import RunDir, atomic_write_json
from lco_cli.runtime.stage import (
    changed_upstream,
    discard_leftover_staging,
    plan_stage,
    read_keys,
    same_config,
    upstream_fingerprint,
    upstream_stages,
)


def _runner(stage: str):
    from lco_cli.recipes import eval as eval_cmd
    from lco_cli.recipes import rm, sft, train

    return {"sft": sft.run_sft, "rm": rm.run_rm, "train": train.run_train, "eval": eval_cmd.run_eval}[stage]


@dataclasses.dataclass
class Decision:
    action: str  # "skip" | "run" | "resume" | "restart" (interrupted before its first checkpoint)
    reason: str


def skip_reason(ctx: Context, stage: str) -> str | None:
    """Why a done stage can be skipped, or None when it must run."""
    sd = ctx.run.stage(stage)
    if not sd.is_done():
        return None
    st = sd.status() or {}
    if not same_config(st, ctx.preset, stage):
        return None
    if changed_upstream(st.get("upstream"), upstream_fingerprint(ctx.run, ctx.preset, stage)):
        return None
    return "done with this config and the same upstream outputs"


def plan(ctx: Context, stages: list[str], force: set[str]) -> dict[str, Decision]:
    """Decide every selected stage up front, so a refusal comes before any work is done."""
    decisions: dict[str, Decision] = {}
    rerunning: list[str] = []
    ctx.run.force |= force
    for stage in stages:
        # A stage also follows one whose section it reads keys of (eval's pi_star reads train.beta).
        follows = [*upstream_stages(ctx.preset, stage), *sorted({k.split(".")[0] for k in read_keys(ctx.preset, stage)})]
        moved_up = list(dict.fromkeys(u for u in follows if u in rerunning))
        if moved_up:
            ctx.run.allow_rerun.add(stage)
        reason = None if stage in force or moved_up else skip_reason(ctx, stage)
        if reason is not None:
            decisions[stage] = Decision("skip", reason)
            discard_leftover_staging(ctx.run, stage)
            continue
        stage_plan = plan_stage(ctx.run, ctx.preset, stage)  # raises on a changed config without --force
        why = stage_plan.reason
        if stage in force:
            why = "--force: " + why
        elif moved_up:
            why = f"{', '.join(moved_up)} reruns first; " + why
        decisions[stage] = Decision(stage_plan.action, why)
        rerunning.append(stage)
    return decisions


def run_pipeline(ctx: Context, stages: list[str], force: set[str]) -> dict:
    decisions = plan(ctx, stages, force)
    timings = {}
    for stage in stages:
        decision = decisions[stage]
        if decision.action == "skip":
            click.echo(f"run: {stage} skipped ({decision.reason})", err=True)
            continue
        click.echo(f"run: {stage} ({decision.action}: {decision.reason})", err=True)
        if stage == "train":
            warn_unread_keys(ctx.preset)
        t0 = time.time()
        _runner(stage)(ctx)
        actual = ctx.run.plans.get(stage)
        if actual is not None:  # an upstream rerun may have turned a planned resume into a fresh run
            decisions[stage] = Decision(actual.action, actual.reason)
        timings[stage] = round(time.time() - t0, 1)
    results = ctx.run.path / "eval" / "results.json"
    actions = {s: d.action for s, d in decisions.items()}
    return {"run_dir": str(ctx.run.path), "stages": actions,
            "reasons": {s: d.reason for s, d in decisions.items()}, "seconds": timings,
            "results": json.loads(results.read_text())["results"] if results.exists() else [],
            "summary": [r.as_json() for r in summarize_run(ctx.run.path, actions, timings)]}


def run_summary(ctx: Context, preset_arg: str | None, actions: dict[str, str],
                timings: dict[str, float]) -> tuple[list[StageSummary], list[NextStep]]:
    """Per stage: state, key result, time, folder (as recorded in the run directory), and the next
    commands (`preset_arg`: the preset as the user named it, None for the default)."""
    rows = summarize_run(ctx.run.path, actions, timings)
    return rows, next_steps(rows, ctx.run.path, preset_arg, ctx.overrides, ctx.preset.train.lr)


def run_seeds(ctx: Context, stages: list[str], force: set[str], seeds: list[int]) -> dict:
    """One pipeline per seed in RUN_DIR/seed-<s>/, plus RUN_DIR/aggregate.json."""
    per_seed, runs = {}, {}
    for s in seeds:
        sub = Context(ctx.preset_name, dataclasses.replace(copy.deepcopy(ctx.preset), seed=s),
                      RunDir(ctx.run.path / f"seed-{s}"), ctx.overrides)
        runs[s] = run_pipeline(sub, stages, force)
        per_seed[s] = runs[s]["results"]
    agg = aggregate_seeds(per_seed)
    atomic_write_json(ctx.run.path / "aggregate.json", agg)
    return {"run_dir": str(ctx.run.path), "seeds": runs, "results": agg["results"]}
