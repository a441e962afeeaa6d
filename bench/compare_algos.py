#!/usr/bin/env python
"""The fair comparison study: LCO vs the RL and distillation baselines in the same `lco train` loop, from
ONE shared SFT and RM, each method at its own learning rate picked on a validation split of TRAINING
prompts (paper Tables 1, 4, 5 and Figs. 4–7 analogues on the embedded `tiny` task; docs/compare.md).

    python bench/compare_algos.py --jobs 2        # the study in docs/compare.md (resumable)
    python bench/compare_algos.py --seeds 0 --steps 4 --select-steps 4 --grid 1e-4 --only LCO-KLD,PPO \
        --tables table1 --lr-mult 0 --fit-epochs 0 --out runs/compare-smoke --doc /tmp/c.md --img /tmp/img   # a smoke run

Stages (finished runs are skipped, so an interrupted study resumes):

1. `lco sft` + `lco rm` with `--base-preset` (default `tiny`) into OUT/base/, and `lco eval` of the SFT policy.
2. lr selection, separately for every (table setting, method): every lr of `--grid`, seed 0,
   `--select-steps` steps (default: as long as the reported runs), trained on the training prompts minus
   `--n-val` of them and scored by greedy accuracy on those `--n-val` (never on the test problems);
   the best lr wins (ties: the smaller).
3. The tables (`TABLES`), every method × `--seeds` at its picked lr, then `lco eval` on the test problems.
   A method in two tables with the same setting (PPO in Tables 1 and 5, LCO-KLD in Tables 1 and 4) is
   one set of runs. Split-gradient telemetry on every Table 1 run.
4. `--lr-mult` × the picked lr, every Table 1 method and seed, telemetry (Figs. 4–6 at a hot lr).
5. Within-batch descent: the dense LCO methods at `--fit-epochs` epochs × 1 minibatch, every seed.

Every run samples `--rollouts` responses per step: batch_size = rollouts / the method's
samples_per_prompt (its algorithm default: 4 for GRPO/DAPO/GSPO, 1 for the others, paper §5). Per-method
update_epochs / minibatches are the algorithms' defaults (docs/compare.md "Defaults"). `--jobs N` runs N
training runs at once in fresh processes (one torch thread each).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml

REPO = Path(__file__).resolve().parents[1]

METHODS: dict[str, list[str]] = {
    "LCO-KLD": ["train.algo=lco", "train.objective=kld", "train.advantage=dpo"],
    "LCO-MSE": ["train.algo=lco", "train.objective=mse", "train.advantage=dpo"],
    "LCO-LCH": ["train.algo=lco", "train.objective=lch", "train.advantage=dpo"],
    "REINFORCE": ["train.algo=reinforce"],
    "PPO": ["train.algo=ppo"],
    "GRPO": ["train.algo=grpo"],
    # max_gen_batches=1: dynamic sampling drops zero-variance groups without refilling from fresh prompts, so
    # DAPO samples the same 64 rollouts per step as everyone else (its default of 3 rounds doubled its budget)
    "DAPO": ["train.algo=dapo", "train.algo_args.max_gen_batches=1"],
    "GSPO": ["train.algo=gspo"],
    "GKD": ["train.algo=gkd"],
    "MiniLLM": ["train.algo=minillm"],
    # sparse sequence advantages (eq. 11); one sample per prompt, so normalised over the batch
    "LCO-KLD-sparse": ["train.algo=lco", "train.objective=kld", "train.advantage=sparse", "train.advantage_norm=batch"],
    "LCO-MSE-sparse": ["train.algo=lco", "train.objective=mse", "train.advantage=sparse", "train.advantage_norm=batch"],
    "LCO-LCH-sparse": ["train.algo=lco", "train.objective=lch", "train.advantage=sparse", "train.advantage_norm=batch"],
}


@dataclass(frozen=True)
class Table:
    """One of the paper's tables: its setting (overrides every run shares) and its rows."""

    title: str
    methods: list[str]
    setting: list[str] = field(default_factory=list)
    tag: str = ""  # names the setting in run folders ("" = the study's default: the DPO RM's reward)
    target: str = "PPO"  # Fig. 7: samples to reach this method's final accuracy


TABLES: dict[str, Table] = {
    "table1": Table("Table 1 analogue: DPO-RM reward (LCO: dense `dpo` advantages)",
                    ["LCO-KLD", "LCO-MSE", "LCO-LCH", "REINFORCE", "PPO", "GRPO", "DAPO", "GSPO"]),
    "table4": Table("Table 4 analogue: on-policy distillation from φ_DPO", ["GKD", "MiniLLM", "LCO-KLD"], target="GKD"),
    "table5_rm": Table("Table 5 analogue, DPO-RM reward (LCO: sparse advantages)",
                       ["PPO", "LCO-MSE-sparse", "LCO-LCH-sparse", "LCO-KLD-sparse"]),
    "table5_verifier": Table("Table 5 analogue, rule-based reward (the ±1 verifier; LCO: sparse advantages)",
                             ["GRPO", "LCO-MSE-sparse", "LCO-LCH-sparse", "LCO-KLD-sparse"], ["train.reward=verifier"],
                             tag="verifier", target="GRPO"),
}


#: half-decades tried, in order, when a method's best lr is the smallest / largest it has tried
EXTEND_DOWN = (1e-6, 3e-7, 1e-7)
EXTEND_UP = (1e-3, 3e-3)


def key_of(table: Table, method: str) -> str:
    """A (setting, method) pair's name: runs and lr picks are per key, so tables with one setting share them."""
    return f"{method}@{table.tag}" if table.tag else method


# --------------------------------------------------------------------------- running


def use_validation_split(n_val: int | None) -> None:
    """With `n_val`, the train stage trains on the task's training prompts minus their last `n_val` and
    its held-out greedy accuracy scores those `n_val` (lr selection); None restores the real task."""
    import copy

    from lco_cli import tasks
    from lco_cli.recipes import train as train_cmd

    def get_task(cfg, seed):
        task = tasks.get_task(cfg, seed)
        if n_val:
            task = copy.copy(task)
            task.train, task.test = task.train[:-n_val], task.train[-n_val:]
        return task

    train_cmd.get_task = get_task


def cli(*args) -> None:
    from click.testing import CliRunner

    from lco_cli.cli import cli as lco

    res = CliRunner().invoke(lco, [str(a) for a in args], catch_exceptions=False)
    if res.exit_code != 0:
        sys.stderr.write(res.output[-4000:])
        raise SystemExit(f"lco {' '.join(map(str, args[:3]))} ... failed with exit code {res.exit_code}")


def flatten(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out += flatten(v, key)
        else:
            out.append(f"{key}={json.dumps(v) if isinstance(v, (list, bool)) or v is None else v}")
    return out


def done(stage_dir: Path) -> bool:
    st = stage_dir / "status.json"
    return st.exists() and json.loads(st.read_text()).get("state") == "done"


def log(msg: str, t0: float) -> None:
    print(f"[compare {time.time() - t0:6.0f}s] {msg}", flush=True)


def prepare_base(out: Path, base_preset: str, overrides: list[str], t0: float) -> Path:
    base = out / "base"
    start = time.time()
    if not done(base / "sft"):
        log("sft (shared)", t0)
        cli("sft", base_preset, "--run-dir", base)
    if not done(base / "rm"):
        log("rm (shared)", t0)
        cli("rm", base_preset, "--run-dir", base)
    if not (base / "eval/results.json").exists():
        log("eval sft", t0)
        cli("eval", base_preset, "--run-dir", base, *overrides, "eval.policies=[sft]")
    if not (base / "wall.json").exists():
        (base / "wall.json").write_text(json.dumps({"seconds": time.time() - start}))
    return base


@dataclass(frozen=True)
class Job:
    """One training run of the study (train, then optionally `lco eval` on the test problems)."""

    run: Path
    overrides: list[str]
    evaluate: bool = True
    n_val: int | None = None  # train on the training prompts minus n_val, score greedy on those n_val


def run_job(base: Path, base_preset: str, job: Job) -> float:
    """Run `job` unless it is finished; its wall seconds. Runs in a worker process under `--jobs`."""
    run = job.run
    if done(run / "train") and (not job.evaluate or (run / "eval/results.json").exists()):
        return json.loads((run / "wall.json").read_text())["seconds"] if (run / "wall.json").exists() else float("nan")
    use_validation_split(job.n_val)
    start = time.time()
    for stage in ("sft", "rm"):
        if not (run / stage).exists():
            shutil.copytree(base / stage, run / stage)
    cli("train", base_preset, "--run-dir", run, *job.overrides)
    if job.evaluate:
        cli("eval", base_preset, "--run-dir", run, *job.overrides, "eval.policies=[train]")
    wall = time.time() - start
    (run / "wall.json").write_text(json.dumps({"seconds": wall}))
    return wall


def run_all(base: Path, base_preset: str, jobs: list[Job], workers: int, t0: float) -> None:
    """Every job, `workers` at a time (fresh spawned processes: no torch state shared with this one)."""
    todo = [j for j in jobs if not (done(j.run / "train") and (not j.evaluate or (j.run / "eval/results.json").exists()))]
    log(f"{len(todo)} of {len(jobs)} runs to do, {workers} at a time", t0)
    if workers <= 1:
        for i, job in enumerate(todo):
            log(f"[{i + 1}/{len(todo)}] {job.run.parent.name}/{job.run.name}", t0)
            run_job(base, base_preset, job)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_job, base, base_preset, job): job for job in todo}
        for i, fut in enumerate(futures):
            fut.result()  # re-raises a failed run's error here
            log(f"[{i + 1}/{len(todo)}] {futures[fut].run.parent.name}/{futures[fut].run.name}", t0)


# --------------------------------------------------------------------------- analysis


def study_overrides(preset: str | None) -> list[str]:
    """Every run's overrides: each algorithm's own samples per prompt / epochs / minibatches, then the train
    and eval sections of `preset` (None: the base preset's own)."""
    from lco_cli.config import bundled_presets

    # null = each algorithm's own default (the base preset `tiny` pins lco's old 4 x 1 x 1 for its documented numbers)
    algo_defaults = ["train.samples_per_prompt=null", "train.update_epochs=null", "train.minibatches=null"]
    if preset is None:
        return algo_defaults
    study = yaml.safe_load(Path(bundled_presets().get(preset, Path(preset))).read_text())
    return algo_defaults + flatten(study.get("train", {}), "train") + flatten(study.get("eval", {}), "eval")


def per_method_overrides(base_preset: str, overrides: list[str], m: str, rollouts: int) -> list[str]:
    """The method's own keys plus the batch size that gives it `rollouts` samples per step."""
    from lco_cli.config import load
    from lco_cli.rl.registry import get_algo

    _, p = load(base_preset, overrides + METHODS[m])
    spp = get_algo(p.train.algo).resolve(p.train).samples_per_prompt
    if rollouts % spp:
        raise SystemExit(f"--rollouts {rollouts} is not a multiple of {m}'s {spp} samples per prompt")
    return METHODS[m] + [f"train.batch_size={rollouts // spp}"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare", help="study folder (resumable)")
    ap.add_argument("--base-preset", default="tiny", help="preset of the shared SFT and RM (and model/task)")
    ap.add_argument("--preset", default="tiny-compare", help="preset whose train/eval sections every run uses")
    ap.add_argument("--tables", default=",".join(TABLES), help=f"tables to run, from {', '.join(TABLES)}")
    ap.add_argument("--only", default="", help="keep only these methods in every table (smoke runs)")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--grid", default="3e-6,1e-5,3e-5,1e-4,3e-4", help="learning rates every method chooses from")
    ap.add_argument("--n-val", type=int, default=200, help="training prompts held out for the lr selection")
    ap.add_argument("--select-steps", type=int, default=None, help="train.steps of the selection runs (default: the reported runs')")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps of the reported runs")
    ap.add_argument("--rollouts", type=int, default=64, help="rollout samples per step, every method")
    ap.add_argument("--lr-mult", type=float, default=10.0, help="lr multiple of the extra Table 1 runs (0: none)")
    ap.add_argument("--fit-epochs", type=int, default=4, help="update_epochs of the extra LCO descent runs (0: none)")
    ap.add_argument("--jobs", type=int, default=1, help="training runs at once (each in its own process, one thread)")
    ap.add_argument("--doc", default=str(REPO / "docs/compare.md"))
    ap.add_argument("--img", default=str(REPO / "docs/img"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import compare_report as rep

    from lco_cli.config import load

    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    seeds, grid, only = [int(s) for s in split(args.seeds)], [float(x) for x in split(args.grid)], set(split(args.only))
    unknown = [t for t in split(args.tables) if t not in TABLES] + [m for m in only if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown tables/methods {unknown}; tables: {list(TABLES)}, methods: {list(METHODS)}")
    tables = {name: Table(TABLES[name].title, [m for m in TABLES[name].methods if not only or m in only], TABLES[name].setting,
                          TABLES[name].tag, TABLES[name].target) for name in split(args.tables)}
    overrides = study_overrides(args.preset) + list(args.set)
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    _, resolved = load(args.base_preset, overrides)
    select_steps = args.select_steps or resolved.train.steps
    base_dir = prepare_base(out, args.base_preset, overrides, t0)
    tele = ["train.telemetry.split_grad_norm=true"]
    # every (setting, method) pair once: its overrides for a given lr and seed
    keys: dict[str, list[str]] = {}
    for table in tables.values():
        for m in table.methods:
            keys[key_of(table, m)] = overrides + per_method_overrides(args.base_preset, overrides, m, args.rollouts) + table.setting
    method_of = {k: k.split("@")[0] for k in keys}

    # lr selection on the validation split of the training prompts (seed 0, no test problem seen)
    def select_job(k: str, lr: float) -> Job:
        return Job(out / "select" / f"{k}-lr{lr:g}", keys[k] + [f"train.lr={lr}", f"train.steps={select_steps}",
                                                                 f"train.eval_problems={args.n_val}", f"train.eval_every={select_steps}", "seed=0"],
                   evaluate=False, n_val=args.n_val)

    tried = {k: sorted(grid) for k in keys}
    selection: dict[str, dict[str, float]] = {k: {} for k in keys}
    lrs: dict[str, float] = {}
    while True:
        todo = [(k, lr) for k in keys for lr in tried[k] if str(lr) not in selection[k]]
        if not todo:
            break
        run_all(base_dir, args.base_preset, [select_job(k, lr) for k, lr in todo], args.jobs, t0)
        for k, lr in todo:
            selection[k][str(lr)] = rep.read_run(select_job(k, lr).run)["final_greedy"]
        for k in keys:
            best = max(selection[k].values())
            lrs[k] = min(lr for lr in tried[k] if selection[k][str(lr)] == best)
            below = [x for x in EXTEND_DOWN if x < tried[k][0]]
            above = [x for x in EXTEND_UP if x > tried[k][-1]]
            if lrs[k] == tried[k][0] and below:  # the optimum may lie below what was tried
                tried[k] = [below[0], *tried[k]]
            elif lrs[k] == tried[k][-1] and above:
                tried[k] = [*tried[k], above[0]]

    # the reported runs (the lr in the folder name: a new pick is a new run)
    reported = {(k, s): Job(out / "reported" / f"{k}-lr{lrs[k]:g}-s{s}", ko + [f"train.lr={lrs[k]}", f"seed={s}"]
                            + (tele if "table1" in tables and method_of[k] in tables["table1"].methods and "@" not in k else []))
                for k, ko in keys.items() for s in seeds}
    t1 = tables.get("table1")
    hot = {(m, s): Job(out / "hot" / f"{m}-lr{lrs[m] * args.lr_mult:g}-s{s}", keys[m] + [f"train.lr={lrs[m] * args.lr_mult}", f"seed={s}"] + tele,
                       evaluate=False)
           for m in (t1.methods if t1 and args.lr_mult else []) for s in seeds}
    # Within-batch descent (Props. 4.7-4.9): dense LCO at fit_epochs x 1 minibatch (the same tokens every step, z_old frozen)
    fit = {(m, s): Job(out / "fit" / f"{m}-lr{lrs[m]:g}-s{s}-e{args.fit_epochs}",
                       keys[m] + [f"train.lr={lrs[m]}", f"seed={s}", f"train.update_epochs={args.fit_epochs}", "train.minibatches=1"],
                       evaluate=False)
           for m in ([m for m in t1.methods if m.startswith("LCO")] if t1 and args.fit_epochs else []) for s in seeds}
    run_all(base_dir, args.base_preset, [*reported.values(), *hot.values(), *fit.values()], args.jobs, t0)

    runs = {k: {s: rep.read_run(reported[k, s].run) for s in seeds} for k in keys}
    hot_runs = {m: {s: rep.read_run(j.run) for (mm, s), j in hot.items() if mm == m} for m in {m for m, _ in hot}}
    fit_runs = {m: {s: rep.read_run(j.run) for (mm, s), j in fit.items() if mm == m} for m in {m for m, _ in fit}}
    summaries = {name: rep.summarise({m: runs[key_of(t, m)] for m in t.methods}, hot_runs if name == "table1" else {},
                                     target_method=t.target) for name, t in tables.items()}
    if fit_runs:
        summaries["fit"] = rep.summarise(fit_runs, {})
    sft_res = json.loads((base_dir / "eval/results.json").read_text())["results"]
    walls = [json.loads((p / "wall.json").read_text())["seconds"] for p in [base_dir, *out.glob("*/*")] if (p / "wall.json").exists()]
    first = next(iter(runs.values()))
    summary = {
        "command": "python bench/compare_algos.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": os.environ.get("OMP_NUM_THREADS"),
        "wall_min": sum(walls) / 60, "elapsed_min": (time.time() - t0) / 60, "jobs": args.jobs,
        "seeds": seeds, "grid": sorted({lr for k in keys for lr in tried[k]}), "lrs": lrs, "selection": selection, "n_val": args.n_val,
        "select_steps": select_steps, "fit_epochs": args.fit_epochs, "lr_mult": args.lr_mult, "eval_problems": resolved.train.eval_problems,
        "titles": {name: t.title for name, t in tables.items()}, "keys": {name: {m: key_of(t, m) for m in t.methods} for name, t in tables.items()},
        # greedy at step 0 of a reported run: the SFT policy on the same eval_problems as every other greedy number
        "sft": {"pass1": next(r for r in sft_res if r["policy"] == "sft")["mean"], "greedy": first[seeds[0]]["curve"][0][2]},
        "setup": (f"one SFT + one DPO RM from `{args.base_preset}`; every run {resolved.train.steps} steps × {args.rollouts} rollouts "
                  "(GRPO/DAPO/GSPO: 4 samples per prompt, the others 1, paper §5), each algorithm's own update_epochs × minibatches "
                  "(lco 1 × 4, PPO 4 × 1, others 1 × 1), rollout T = 0.6, top-p = 0.95, β = 1."),
        "tables": summaries,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    files = rep.plot(summaries, Path(args.img), args.lr_mult)
    doc = Path(args.doc)
    rep.write_doc(doc, rep.markdown(summary, os.path.relpath(Path(args.img), doc.parent), files))
    log(f"done: {out / 'summary.json'}, {doc}", t0)


if __name__ == "__main__":
    main()
