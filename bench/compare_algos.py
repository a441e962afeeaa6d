#!/usr/bin/env python
"""LCO vs the RL baselines in the same `lco train` loop, from ONE shared SFT and RM (paper Table 1,
Fig. 7 and Figs. 1/4/5 analogues on the embedded `tiny` task).

    python bench/compare_algos.py                       # the RM-reward study (≈ 15 min on 2 CPU cores)
    python bench/compare_algos.py --out runs/compare-verifier --base runs/compare/base --tag verifier \
        --methods LCO-KLD-sparse,LCO-LCH-sparse,GRPO,PPO,REINFORCE --set train.reward=verifier --lr-mult 0
                                                        # the verifier-reward study on the same SFT/RM (≈ 9 min)
    python bench/compare_algos.py --seeds 0 --steps 10  # a smoke run

What it does:

1. `lco sft` and `lco rm` with the bundled `--base-preset` (default `tiny`) into OUT/base/ (skipped
   when already done), and `lco eval` of the SFT policy there.
2. For every method × seed: a run dir OUT/runs/<method>-s<seed>/ holding copies of that SFT and RM,
   `lco train` with the `train` section of `--preset` (default `tiny-compare`) applied as overrides
   on the base preset plus the method's own overrides, then `lco eval` of the trained policy. Every
   method sees the same number of rollout samples per step (batch_size × samples_per_prompt; DAPO's
   refills add more and are counted), the same reward model and the same optimizer steps per batch.
3. For every method, one more seed-0 run at `--lr-mult` × the learning rate (split-gradient telemetry).
4. OUT/summary.json, PNGs under `--img` and the generated part of `--doc` (between the
   `<!-- BEGIN GENERATED -->` / `<!-- END GENERATED -->` markers; text outside them is kept).

Seeds vary only the training randomness (rollout sampling, prompt order, eval sampling): the
held-out split of the task is pinned to the base preset's seed, so every run is evaluated on the
same problems that the shared SFT never saw. (`seed` also picks the task split in `lco_cli`; this
script pins it by patching `get_task` in the train/eval commands, in-process.)

Finished runs are skipped, so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
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
    # LCO with sparse sequence advantages (eq. 11) from train.reward, group-normalised (paper Table 5)
    "LCO-KLD-sparse": ["train.algo=lco", "train.objective=kld", "train.advantage=sparse"],
    "LCO-LCH-sparse": ["train.algo=lco", "train.objective=lch", "train.advantage=sparse"],
}
DEFAULT_METHODS = ["LCO-KLD", "LCO-MSE", "LCO-LCH", "GRPO", "PPO", "REINFORCE"]
def markers(tag: str) -> tuple[str, str]:
    suffix = f":{tag}" if tag else ""
    return f"<!-- BEGIN GENERATED{suffix} -->", f"<!-- END GENERATED{suffix} -->"


# --------------------------------------------------------------------------- running


def pin_task_split(seed: int) -> None:
    """Train/eval draw the task split from the base preset's seed, whatever `seed` a run uses."""
    from lco_cli import tasks
    from lco_cli.commands import eval as eval_cmd
    from lco_cli.recipes import train as train_cmd

    real = tasks.get_task
    train_cmd.get_task = eval_cmd.get_task = lambda cfg, _seed: real(cfg, seed)


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


def train_and_eval(base: Path, run: Path, base_preset: str, overrides: list[str], t0: float) -> float:
    if done(run / "train") and (run / "eval/results.json").exists():
        return json.loads((run / "wall.json").read_text())["seconds"] if (run / "wall.json").exists() else float("nan")
    start = time.time()
    for stage in ("sft", "rm"):
        if not (run / stage).exists():
            shutil.copytree(base / stage, run / stage)
    cli("train", base_preset, "--run-dir", run, *overrides)
    cli("eval", base_preset, "--run-dir", run, *overrides, "eval.policies=[train]")
    wall = time.time() - start
    (run / "wall.json").write_text(json.dumps({"seconds": wall}))
    return wall


# --------------------------------------------------------------------------- analysis


def read_run(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "train/metrics.jsonl").read_text().splitlines() if line.strip()]
    res = json.loads((run / "eval/results.json").read_text())["results"]
    pass1 = next(r for r in res if r["policy"] == "train")
    curve = [(r["step"], r.get("rollout_samples_total", 0), r["heldout_acc"]) for r in rows if "heldout_acc" in r]
    steps = [r for r in rows if r.get("step", 0) > 0]
    keys = ("grad_norm", "grad_norm_pos", "grad_norm_neg", "reward_mean", "entropy", "sampled_prob", "kl_ref", "clipfrac")
    series = {k: [r.get(k, float("nan")) for r in steps] for k in keys}
    wall = json.loads((run / "wall.json").read_text())["seconds"] if (run / "wall.json").exists() else float("nan")
    return {"pass1": pass1["mean"], "pass1_stderr": pass1["stderr"], "k": pass1["k"], "n_problems": pass1["n_problems"],
            "curve": curve, "final_greedy": curve[-1][2] if curve else float("nan"), "series": series,
            "samples_total": steps[-1].get("rollout_samples_total", float("nan")) if steps else float("nan"), "wall_s": wall}


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def mean_curve(runs: list[dict]) -> list[tuple[float, float, float]]:
    """(mean samples, mean acc, std acc) per eval point, over the seeds that have that point."""
    n = min(len(r["curve"]) for r in runs)
    out = []
    for i in range(n):
        acc = [r["curve"][i][2] for r in runs]
        out.append((statistics.fmean(r["curve"][i][1] for r in runs), *mean_std(acc)))
    return out


def samples_to_reach(curve: list[tuple[float, float, float]], target: float) -> float | None:
    """Rollout samples at the first eval point after the start whose seed-mean accuracy reaches
    `target` (linear interpolation between eval points); None if never reached."""
    prev = None
    for samples, acc, _ in curve:
        if samples == 0:  # the step-0 evaluation of the SFT policy itself
            prev = (samples, acc)
            continue
        if acc >= target:
            if prev is None or prev[1] >= target:
                return samples
            s0, a0 = prev
            return s0 + (target - a0) / (acc - a0) * (samples - s0)
        prev = (samples, acc)
    return None


def spike_stats(norms: list[float]) -> dict[str, float]:
    """max / median (spikiness) and last-quarter / first-quarter mean (decay < 1 < growth)."""
    xs = [x for x in norms if not math.isnan(x)]
    if len(xs) < 4:
        return {"max_over_median": float("nan"), "late_over_early": float("nan")}
    q = max(1, len(xs) // 4)
    return {"max_over_median": max(xs) / max(statistics.median(xs), 1e-12),
            "late_over_early": statistics.fmean(xs[-q:]) / max(statistics.fmean(xs[:q]), 1e-12)}


def plot(summary: dict, img: Path, tag: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    files = []
    methods = list(summary["methods"])
    # Accuracy vs rollout samples (Fig. 7 analogue)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        curve = summary["methods"][m]["mean_curve"]
        xs, ys, sd = [c[0] for c in curve], [c[1] for c in curve], [c[2] for c in curve]
        ax.plot(xs, ys, marker="o", ms=3, label=m)
        ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.12)
    if summary.get("target") is not None:
        ax.axhline(summary["target"], color="gray", ls="--", lw=1, label="GRPO final")
    ax.set_xlabel("rollout samples")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(f"Accuracy vs samples (mean ± std over {len(summary['seeds'])} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    prefix = f"compare_{tag}_" if tag else "compare_"
    fig.savefig(img / f"{prefix}accuracy.png", dpi=120)
    plt.close(fig)
    files.append(f"{prefix}accuracy.png")
    # Split gradient norms (Figs. 1/4/5 analogue), default and hot learning rate
    for tag_, key in (("default", "grad_default"), ("hot", "grad_hot")):
        present = [m for m in methods if summary["methods"][m].get(key)]
        if not present:
            continue
        cols = min(3, len(present))
        rows = math.ceil(len(present) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
        for ax, m in zip(axes.flat, present):
            s = summary["methods"][m][key]
            steps = range(1, len(s["grad_norm"]) + 1)
            ax.plot(steps, s["grad_norm_pos"], label="A ≥ 0", color="tab:green")
            ax.plot(steps, s["grad_norm_neg"], label="A < 0", color="tab:red")
            ax.plot(steps, s["grad_norm"], label="all", color="black", lw=0.8, alpha=0.6)
            ax.set_title(m, fontsize=10)
            ax.set_yscale("log")
            ax.set_xlabel("step", fontsize=8)
        for ax in list(axes.flat)[len(present):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        lr = summary["lr"] * (summary["lr_mult"] if tag_ == "hot" else 1)
        fig.suptitle(f"Gradient norm by advantage sign, lr = {lr:g} (seed 0)")
        fig.tight_layout()
        name = f"{prefix}gradnorm_{'lr' + format(summary['lr_mult'], 'g') + 'x' if tag_ == 'hot' else 'default'}.png"
        fig.savefig(img / name, dpi=120)
        plt.close(fig)
        files.append(name)
    return files


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def markdown(summary: dict, img_rel: str, files: list[str]) -> str:
    ms = summary["methods"]
    shared = " (shared SFT/RM reused, not counted)" if summary.get("base_reused") else ""
    lines = [(f"_Generated by `{summary['command']}` on {summary['date']}; "
              f"{summary['wall_min']:.1f} min of wall time for its stages and runs{shared}, {summary['threads']} thread(s)._"), ""]
    lines += ["**Setup.** " + summary["setup"], ""]
    lines += ["### Held-out accuracy (Table 1 analogue)", "",
              (f"`lco eval` pass@1 on the {summary['eval']['n_problems']} held-out problems, k = {summary['eval']['k']} samples at "
               f"T = {summary['eval']['temperature']}, top-p = {summary['eval']['top_p']}; greedy = the train loop's held-out greedy "
               f"accuracy ({summary['eval_problems']} problems) after the last step. Mean ± std over seeds {summary['seeds']}."), "",
              "| method | pass@1 | greedy | rollout samples | wall / run |", "|---|---|---|---|---|"]
    sft = summary["sft"]
    lines.append(f"| SFT (start) | {fmt(sft['pass1'])} | {fmt(sft['greedy'])} | 0 | |")
    for m, d in ms.items():
        lines.append(f"| {m} | {fmt(d['pass1_mean'])} ± {fmt(d['pass1_std'])} | {fmt(d['greedy_mean'])} ± {fmt(d['greedy_std'])} "
                     f"| {d['samples_total']:.0f} | {d['wall_mean_s']:.0f} s |")
    lines += ["", "### Rollout samples to reach GRPO's final accuracy (Fig. 7 analogue)", "",
              (f"Target: GRPO's final seed-mean greedy accuracy, {fmt(summary['target'])}. Samples at the first evaluation after "
               f"the start (every {summary['eval_every']} steps, linear interpolation) where the seed-mean curve reaches it; "
               "the ratio is relative to PPO (paper: LCO-KLD ≈ 0.5, LCO-LCH ≈ 0.33).")]
    if summary["target"] is not None and summary["target"] <= summary["sft"]["greedy"]:
        lines += ["", (f"**Undefined here:** GRPO ends *below* the SFT policy it started from ({fmt(summary['target'])} ≤ "
                       f"{fmt(summary['sft']['greedy'])}), so \"reaching GRPO's final accuracy\" measures how long a method stays "
                       "above a declining baseline, not sample efficiency. The column is shown for completeness only.")]
    lines += ["", "| method | samples to target | ÷ PPO's |", "|---|---|---|"]
    ppo = ms.get("PPO", {}).get("samples_to_target")
    for m, d in ms.items():
        s = d["samples_to_target"]
        ratio = s / ppo if s is not None and ppo else None
        lines.append(f"| {m} | {'not reached' if s is None else f'{s:.0f}'} | {fmt(ratio, 2) if ratio is not None else 'n/a'} |")
    lines += ["", f"![accuracy vs samples]({img_rel}/{files[0]})", ""]
    lines += ["### Gradient norms by advantage sign (Figs. 1, 4, 5 analogue)", "",
              f"Pre-clipping gradient norm per step (mean over the step's optimizer steps), split into the part from tokens with "
              f"A ≥ 0 and with A < 0 (`train.telemetry.split_grad_norm=true`), seed 0, at the default lr ({summary['lr']:g})"
              + (f" and at {summary['lr_mult']:g}× ({summary['lr'] * summary['lr_mult']:g})" if summary["lr_mult"] else "")
              + ". `max/med` = largest / median norm over the run "
              "(spikes), `late/early` = mean of the last quarter of steps / first quarter (< 1: decays).", "",
              "| method | lr | max/med (all) | late/early (all) | late/early (A<0) | final greedy |", "|---|---|---|---|---|---|"]
    for m, d in ms.items():
        for key, lr_tag in (("grad_default", "default"), ("grad_hot", f"{summary['lr_mult']:g}×")):
            g = d.get(key)
            if not g:
                continue
            lines.append(f"| {m} | {lr_tag} | {fmt(g['stats']['max_over_median'], 2)} | {fmt(g['stats']['late_over_early'], 2)} "
                         f"| {fmt(g['stats_neg']['late_over_early'], 2)} | {fmt(g['final_greedy'])} |")
    lines.append("")
    for f in files[1:]:
        lines += [f"![gradient norms]({img_rel}/{f})", ""]
    return "\n".join(lines)


def write_doc(doc: Path, generated: str, tag: str = "") -> None:
    BEGIN, END = markers(tag)
    block = f"{BEGIN}\n{generated}\n{END}"
    if doc.exists() and BEGIN in doc.read_text() and END in doc.read_text():
        text = doc.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc.write_text(head + block + tail)
    else:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text((doc.read_text() if doc.exists() else "# LCO vs RL baselines on `tiny`\n") + f"\n{block}\n")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare", help="study folder (resumable)")
    ap.add_argument("--base-preset", default="tiny", help="preset of the shared SFT and RM (and model/task)")
    ap.add_argument("--preset", default="tiny-compare", help="preset whose train/eval sections every run uses")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    ap.add_argument("--lr-mult", type=float, default=10.0, help="learning-rate multiple of the extra seed-0 runs (0: none)")
    ap.add_argument("--hot-methods", default=None, help="methods that get the high-lr run (default: all)")
    ap.add_argument("--doc", default=str(REPO / "docs/compare.md"))
    ap.add_argument("--img", default=str(REPO / "docs/img"))
    ap.add_argument("--base", default=None, help="reuse the shared SFT/RM (and SFT eval) of this folder instead of OUT/base")
    ap.add_argument("--tag", default="", help="name of this study's generated block in --doc and of its image files")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every train/eval run")
    args = ap.parse_args(argv)

    from lco_cli.config import bundled_presets, load

    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {list(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    hot = methods if args.hot_methods is None else [m.strip() for m in args.hot_methods.split(",") if m.strip()]

    preset_path = bundled_presets().get(args.preset, Path(args.preset))
    study = yaml.safe_load(Path(preset_path).read_text())
    _, base = load(args.base_preset)
    for section in ("model", "task"):  # a study preset for another model/task would be meaningless here
        if study.get(section) and load(args.preset)[1].__dict__[section] != base.__dict__[section]:
            print(f"note: {args.preset}.{section} differs from {args.base_preset}.{section}; using {args.base_preset}'s", flush=True)
    overrides = flatten(study.get("train", {}), "train") + flatten(study.get("eval", {}), "eval") + list(args.set)
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    _, resolved = load(args.base_preset, overrides)
    pin_task_split(base.seed)

    base_dir = Path(args.base).resolve() if args.base else prepare_base(out, args.base_preset, overrides, t0)
    if args.base and not (done(base_dir / "sft") and done(base_dir / "rm") and (base_dir / "eval/results.json").exists()):
        raise SystemExit(f"--base {base_dir}: needs finished sft/, rm/ and eval/results.json (run once without --base)")
    runs: dict[str, dict[int, dict]] = {}
    hot_runs: dict[str, dict] = {}
    for seed in seeds:
        for m in methods:
            run = out / "runs" / f"{m}-s{seed}"
            log(f"{m} seed {seed}", t0)
            # split-gradient telemetry (a second backward) only where it is plotted: the first seed
            telemetry = [] if seed == seeds[0] else ["train.telemetry.split_grad_norm=false"]
            train_and_eval(base_dir, run, args.base_preset, overrides + METHODS[m] + [f"seed={seed}"] + telemetry, t0)
            runs.setdefault(m, {})[seed] = read_run(run)
    if args.lr_mult:
        for m in hot:
            run = out / "runs" / f"{m}-s{seeds[0]}-lr{args.lr_mult:g}x"
            log(f"{m} seed {seeds[0]} at {args.lr_mult:g}x lr", t0)
            hot_over = overrides + METHODS[m] + [f"seed={seeds[0]}", f"train.lr={resolved.train.lr * args.lr_mult}",
                                                 "train.telemetry.split_grad_norm=true"]
            train_and_eval(base_dir, run, args.base_preset, hot_over, t0)
            hot_runs[m] = read_run(run)

    sft_res = json.loads((base_dir / "eval/results.json").read_text())["results"]
    sft_eval = json.loads((base_dir / "sft/eval.json").read_text()) if (base_dir / "sft/eval.json").exists() else {}
    summary = {
        "command": "python bench/compare_algos.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "seeds": seeds, "lr": resolved.train.lr, "lr_mult": args.lr_mult,
        "eval_every": resolved.train.eval_every, "eval_problems": resolved.train.eval_problems,
        "eval": {"k": resolved.eval.samples, "temperature": resolved.eval.temperature, "top_p": resolved.eval.top_p,
                 "n_problems": next(r for r in sft_res if r["policy"] == "sft")["n_problems"]},
        "sft": {"pass1": next(r for r in sft_res if r["policy"] == "sft")["mean"],
                "greedy": sft_eval.get("heldout_acc", float("nan"))},
        "setup": (f"one SFT + one DPO RM from `{args.base_preset}`; every run: {resolved.train.steps} steps × "
                  f"{resolved.train.batch_size} prompts × {resolved.train.samples_per_prompt} samples "
                  f"({resolved.train.batch_size * resolved.train.samples_per_prompt} rollouts/step), "
                  f"{resolved.train.update_epochs} epochs × {resolved.train.minibatches} minibatches per batch, lr {resolved.train.lr:g}, "
                  f"rollout T = {resolved.train.rollout.temperature}, top-p = {resolved.train.rollout.top_p}, "
                  f"sequence reward `train.reward={resolved.train.reward}`"
                  + (" (the same DPO RM gives LCO its `dpo` advantages)" if resolved.train.reward == "rm" else "")
                  + ", "
                  "baselines at their paper/TRL defaults."),
        "methods": {},
    }
    for m in methods:
        rs = [runs[m][s] for s in seeds]
        p1, g = mean_std([r["pass1"] for r in rs]), mean_std([r["final_greedy"] for r in rs])
        d = {"pass1_mean": p1[0], "pass1_std": p1[1], "greedy_mean": g[0], "greedy_std": g[1],
             "pass1_per_seed": [r["pass1"] for r in rs], "greedy_per_seed": [r["final_greedy"] for r in rs],
             "samples_total": statistics.fmean(r["samples_total"] for r in rs), "mean_curve": mean_curve(rs),
             "wall_mean_s": statistics.fmean(r["wall_s"] for r in rs if not math.isnan(r["wall_s"])) if any(not math.isnan(r["wall_s"]) for r in rs) else float("nan")}
        s0 = rs[0]["series"]
        d["grad_default"] = {**{k: s0[k] for k in ("grad_norm", "grad_norm_pos", "grad_norm_neg")},
                             "stats": spike_stats(s0["grad_norm"]), "stats_neg": spike_stats(s0["grad_norm_neg"]),
                             "final_greedy": rs[0]["final_greedy"]}
        if m in hot_runs:
            sh = hot_runs[m]["series"]
            d["grad_hot"] = {**{k: sh[k] for k in ("grad_norm", "grad_norm_pos", "grad_norm_neg")},
                             "stats": spike_stats(sh["grad_norm"]), "stats_neg": spike_stats(sh["grad_norm_neg"]),
                             "final_greedy": hot_runs[m]["final_greedy"], "pass1": hot_runs[m]["pass1"]}
        summary["methods"][m] = d
    target = summary["methods"].get("GRPO", {}).get("greedy_mean")
    summary["target"] = target
    for m, d in summary["methods"].items():
        d["samples_to_target"] = samples_to_reach(d["mean_curve"], target) if target is not None else None
    # compute time of the study: the shared stages plus every run (a re-analysis of finished runs is free)
    walls = [json.loads((base_dir / "wall.json").read_text())["seconds"]] if (base_dir / "wall.json").exists() else []
    walls += [r["wall_s"] for m in runs for r in runs[m].values()] + [r["wall_s"] for r in hot_runs.values()]
    summary["wall_min"] = sum(w for w in walls if not math.isnan(w)) / 60
    summary["base_reused"] = bool(args.base)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    img = Path(args.img)
    files = plot(summary, img, args.tag)
    doc = Path(args.doc)
    try:
        img_rel = os.path.relpath(img, doc.parent)
    except ValueError:
        img_rel = str(img)
    write_doc(doc, markdown(summary, img_rel, files), args.tag)
    log(f"done: {out / 'summary.json'}, {doc}", t0)


if __name__ == "__main__":
    main()
