#!/usr/bin/env python
"""The fair comparison study: LCO vs the RL baselines in the same `lco train` loop, from ONE shared
SFT and RM, each method at its own learning rate picked on a validation split of TRAINING prompts
(paper Table 1, Table 5, Figs. 4–7 analogues on the embedded `tiny` task; docs/compare.md).

    python bench/compare_algos.py                 # the study in docs/compare.md (≈ 40 min, 2 shared CPU cores)
    python bench/compare_algos.py --seeds 0 --steps 4 --select-steps 2 --grid 1e-4 --methods LCO-KLD,PPO \
        --table5 "" --lr-mult 0 --out runs/compare-smoke --doc /tmp/c.md --img /tmp/img   # a smoke run

Stages (finished runs are skipped, so an interrupted study resumes):

1. `lco sft` + `lco rm` with `--base-preset` (default `tiny`) into OUT/base/, and `lco eval` of the SFT policy.
2. lr selection: every method × every lr of `--grid`, seed 0, `--select-steps` steps, trained on the
   training prompts minus `--n-val` of them and scored by greedy accuracy on those `--n-val` (never on
   the test problems); the best lr wins (ties: the smaller).
3. Table 1 (`train.reward=rm`, LCO `advantage=dpo`): every method × `--seeds` at its picked lr, then
   `lco eval` on the test problems; split-gradient telemetry on the first seed.
4. `--lr-mult` × the picked lr, first seed, telemetry (Figs. 4–6 at a hot lr).
5. Table 5 (`train.reward=verifier`, LCO sparse advantages): `--table5` methods × seeds at the lr picked
   for their Table 1 counterpart (LCO-KLD-sparse uses LCO-KLD's).

Every run samples `--rollouts` responses per step: batch_size = rollouts / the method's
samples_per_prompt (its algorithm default: 4 for GRPO, 1 for the others, paper §5). Per-method
update_epochs / minibatches are the algorithms' defaults (docs/compare.md "Defaults").
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml

REPO = Path(__file__).resolve().parents[1]

METHODS: dict[str, list[str]] = {
    "LCO-KLD": ["train.algo=lco", "train.objective=kld", "train.advantage=dpo"],
    "LCO-MSE": ["train.algo=lco", "train.objective=mse", "train.advantage=dpo"],
    "LCO-LCH": ["train.algo=lco", "train.objective=lch", "train.advantage=dpo"],
    "GRPO": ["train.algo=grpo"],
    "PPO": ["train.algo=ppo"],
    "REINFORCE": ["train.algo=reinforce"],
    "DAPO": ["train.algo=dapo"],
    "GSPO": ["train.algo=gspo"],
    # sparse sequence advantages (eq. 11); one sample per prompt, so normalised over the batch
    "LCO-KLD-sparse": ["train.algo=lco", "train.objective=kld", "train.advantage=sparse", "train.advantage_norm=batch"],
    "LCO-LCH-sparse": ["train.algo=lco", "train.objective=lch", "train.advantage=sparse", "train.advantage_norm=batch"],
}
DEFAULT_METHODS = ["LCO-KLD", "LCO-MSE", "LCO-LCH", "PPO", "GRPO", "REINFORCE"]
DEFAULT_TABLE5 = ["LCO-KLD-sparse", "LCO-LCH-sparse", "GRPO"]


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


def train_and_eval(base: Path, run: Path, base_preset: str, overrides: list[str], t0: float, evaluate: bool = True) -> float:
    if done(run / "train") and (not evaluate or (run / "eval/results.json").exists()):
        return json.loads((run / "wall.json").read_text())["seconds"] if (run / "wall.json").exists() else float("nan")
    start = time.time()
    for stage in ("sft", "rm"):
        if not (run / stage).exists():
            shutil.copytree(base / stage, run / stage)
    cli("train", base_preset, "--run-dir", run, *overrides)
    if evaluate:
        cli("eval", base_preset, "--run-dir", run, *overrides, "eval.policies=[train]")
    wall = time.time() - start
    (run / "wall.json").write_text(json.dumps({"seconds": wall}))
    return wall


# --------------------------------------------------------------------------- analysis


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
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"Table 1 methods, from {', '.join(METHODS)}")
    ap.add_argument("--table5", default=",".join(DEFAULT_TABLE5), help="Table 5 (verifier reward) methods; '' for none")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--grid", default="3e-6,1e-5,3e-5,1e-4,3e-4", help="learning rates every method chooses from")
    ap.add_argument("--n-val", type=int, default=200, help="training prompts held out for the lr selection")
    ap.add_argument("--select-steps", type=int, default=15, help="train.steps of the selection runs")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps of the reported runs")
    ap.add_argument("--rollouts", type=int, default=64, help="rollout samples per step, every method")
    ap.add_argument("--lr-mult", type=float, default=10.0, help="lr multiple of the extra first-seed runs (0: none)")
    ap.add_argument("--fit-epochs", type=int, default=4, help="update_epochs of the extra LCO descent runs (0: none)")
    ap.add_argument("--doc", default=str(REPO / "docs/compare.md"))
    ap.add_argument("--img", default=str(REPO / "docs/img"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import compare_report as rep

    from lco_cli.config import bundled_presets, load

    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    methods, table5, seeds, grid = split(args.methods), split(args.table5), [int(s) for s in split(args.seeds)], [float(x) for x in split(args.grid)]
    unknown = [m for m in methods + table5 if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {list(METHODS)}")
    study = yaml.safe_load(Path(bundled_presets().get(args.preset, Path(args.preset))).read_text())
    # null = each algorithm's own default (the base preset `tiny` pins lco's old 4 x 1 x 1 for its documented numbers)
    algo_defaults = ["train.samples_per_prompt=null", "train.update_epochs=null", "train.minibatches=null"]
    overrides = algo_defaults + flatten(study.get("train", {}), "train") + flatten(study.get("eval", {}), "eval") + list(args.set)
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    _, resolved = load(args.base_preset, overrides)
    base_dir = prepare_base(out, args.base_preset, overrides, t0)
    tele = ["train.telemetry.split_grad_norm=true"]

    # lr selection on the validation split of the training prompts (seed 0, no test problem seen)
    selection: dict[str, dict[str, float]] = {}
    lrs: dict[str, float] = {}
    use_validation_split(args.n_val)
    for m in methods:
        for lr in grid:
            run = out / "select" / f"{m}-lr{lr:g}"
            log(f"select {m} lr {lr:g}", t0)
            train_and_eval(base_dir, run, args.base_preset, overrides + per_method_overrides(args.base_preset, overrides, m, args.rollouts)
                           + [f"train.lr={lr}", f"train.steps={args.select_steps}", f"train.eval_problems={args.n_val}",
                              f"train.eval_every={args.select_steps}", "seed=0"], t0, evaluate=False)
            selection.setdefault(m, {})[str(lr)] = rep.read_run(run)["final_greedy"]
        best = max(selection[m].values())
        lrs[m] = min(lr for lr in grid if selection[m][str(lr)] == best)
    use_validation_split(None)

    def reported(ms: list[str], extra: list[str], tag: str) -> dict[str, dict[int, dict]]:
        runs: dict[str, dict[int, dict]] = {}
        for seed in seeds:
            for m in ms:
                lr = lrs[m.replace("-sparse", "")]
                run = out / tag / f"{m}-lr{lr:g}-s{seed}"  # the lr in the name: a new pick is a new run
                log(f"{tag} {m} seed {seed} lr {lr:g}", t0)
                train_and_eval(base_dir, run, args.base_preset, overrides + per_method_overrides(args.base_preset, overrides, m, args.rollouts)
                               + extra + [f"train.lr={lr}", f"seed={seed}"] + (tele if seed == seeds[0] and tag == "table1" else []), t0)
                runs.setdefault(m, {})[seed] = rep.read_run(run)
        return runs

    table1 = reported(methods, [], "table1")
    hot: dict[str, dict] = {}
    if args.lr_mult:
        for m in methods:
            run = out / "hot" / f"{m}-lr{lrs[m] * args.lr_mult:g}-s{seeds[0]}"
            log(f"hot {m} lr {lrs[m] * args.lr_mult:g}", t0)
            train_and_eval(base_dir, run, args.base_preset, overrides + per_method_overrides(args.base_preset, overrides, m, args.rollouts)
                           + [f"train.lr={lrs[m] * args.lr_mult}", f"seed={seeds[0]}"] + tele, t0, evaluate=False)
            hot[m] = rep.read_run(run)
    # Within-batch descent (Props. 4.7-4.9): the LCO methods at 4 epochs x 1 minibatch (the same tokens
    # every step, z_old frozen), first seed, picked lr; loss_last / loss_first per rollout batch.
    fit: dict[str, dict] = {}
    for m in [m for m in methods if m.startswith("LCO")] if args.fit_epochs else []:
        run = out / "fit" / f"{m}-lr{lrs[m]:g}-s{seeds[0]}-e{args.fit_epochs}"
        log(f"fit {m} {args.fit_epochs} epochs", t0)
        train_and_eval(base_dir, run, args.base_preset, overrides + per_method_overrides(args.base_preset, overrides, m, args.rollouts)
                       + [f"train.lr={lrs[m]}", f"seed={seeds[0]}", f"train.update_epochs={args.fit_epochs}", "train.minibatches=1"],
                       t0, evaluate=False)
        fit[m] = rep.read_run(run)
    missing = [m for m in table5 if m.replace("-sparse", "") not in lrs]
    if missing:
        raise SystemExit(f"--table5 {missing}: their Table 1 counterpart must be in --methods (it gives the lr)")
    table5_runs = reported(table5, ["train.reward=verifier"], "table5") if table5 else {}

    sft_res = json.loads((base_dir / "eval/results.json").read_text())["results"]
    walls = [json.loads((p / "wall.json").read_text())["seconds"] for p in [base_dir, *out.glob("*/*")] if (p / "wall.json").exists()]
    tables = {"table1": rep.summarise(table1, hot), "fit": rep.summarise({m: {seeds[0]: r} for m, r in fit.items()}, {}) if fit else {}}
    if table5_runs:
        tables["table5"] = rep.summarise(table5_runs, {}, target_method="GRPO")
    summary = {
        "command": "python bench/compare_algos.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": os.environ.get("OMP_NUM_THREADS"),
        "wall_min": sum(walls) / 60, "seeds": seeds, "grid": grid, "lrs": lrs, "selection": selection, "n_val": args.n_val,
        "select_steps": args.select_steps, "fit_epochs": args.fit_epochs, "lr_mult": args.lr_mult, "eval_problems": resolved.train.eval_problems,
        # greedy at step 0 of a reported run: the SFT policy on the same eval_problems as every other greedy number
        "sft": {"pass1": next(r for r in sft_res if r["policy"] == "sft")["mean"],
                "greedy": next(iter(table1[methods[0]].values()))["curve"][0][2]},
        "setup": (f"one SFT + one DPO RM from `{args.base_preset}`; every run {resolved.train.steps} steps × {args.rollouts} rollouts "
                  "(GRPO: 4 samples per prompt, the others 1, paper §5), each algorithm's own update_epochs × minibatches "
                  "(lco 1 × 4, PPO 4 × 1, others 1 × 1), rollout T = 0.6, top-p = 0.95, β = 1."),
        "tables": tables,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    files = rep.plot(tables, Path(args.img), args.lr_mult)
    doc = Path(args.doc)
    rep.write_doc(doc, rep.markdown(summary, os.path.relpath(Path(args.img), doc.parent), files))
    log(f"done: {out / 'summary.json'}, {doc}", t0)


if __name__ == "__main__":
    main()
