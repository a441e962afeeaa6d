"""Analysis of a `bench/compare_algos.py` study: per-run metrics, seed means, the paper's figure
analogues (PNG) and the generated block of docs/compare.md. No training here."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path


def read_run(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "train/metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [(r["step"], r.get("rollout_samples_total", 0), r["heldout_acc"]) for r in rows if "heldout_acc" in r]
    steps = [r for r in rows if r.get("step", 0) > 0]
    keys = ("grad_norm", "grad_norm_pos", "grad_norm_neg", "reward_mean", "entropy", "kl_ref", "loss_first", "loss_last")
    out = {"curve": curve, "final_greedy": curve[-1][2] if curve else float("nan"),
           "series": {k: [r.get(k, float("nan")) for r in steps] for k in keys},
           "samples_total": steps[-1].get("rollout_samples_total", float("nan")) if steps else float("nan"),
           "wall_s": json.loads((run / "wall.json").read_text())["seconds"] if (run / "wall.json").exists() else float("nan")}
    if (run / "eval/results.json").exists():
        res = json.loads((run / "eval/results.json").read_text())["results"]
        p1 = next(r for r in res if r["policy"] == "train")
        out.update({"pass1": p1["mean"], "k": p1["k"], "n_problems": p1["n_problems"]})
    return out


def mean_std(xs) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def mean_curve(runs: list[dict]) -> list[tuple[float, float, float]]:
    """(mean samples, mean acc, std acc) per eval point, over the seeds."""
    n = min(len(r["curve"]) for r in runs)
    return [(statistics.fmean(r["curve"][i][1] for r in runs), *mean_std([r["curve"][i][2] for r in runs])) for i in range(n)]


def samples_to_reach(curve, target: float) -> float | None:
    """Rollout samples where the seed-mean curve first reaches `target` after the start (linear
    interpolation between evaluations); None if never."""
    prev = None
    for samples, acc, _ in curve:
        if samples == 0:
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
    """max / median (spikiness) and last-quarter / first-quarter mean (< 1: decays)."""
    xs = [x for x in norms if not math.isnan(x)]
    if len(xs) < 4:
        return {"max_over_median": float("nan"), "late_over_early": float("nan")}
    q = max(1, len(xs) // 4)
    return {"max_over_median": max(xs) / max(statistics.median(xs), 1e-12),
            "late_over_early": statistics.fmean(xs[-q:]) / max(statistics.fmean(xs[:q]), 1e-12)}


def grad_split(runs: list[dict]) -> dict | None:
    """Figs. 4–6 statistics of runs with split-gradient telemetry: per-seed spike/decay ratios, then
    mean ± std over the seeds; the first seed's curves for the plot."""
    runs = [r for r in runs if any(not math.isnan(x) for x in r["series"]["grad_norm_pos"])]
    if not runs:
        return None
    out = {k: runs[0]["series"][k] for k in ("grad_norm", "grad_norm_pos", "grad_norm_neg")}
    for name, series, stat in (("max_over_median", "grad_norm", "max_over_median"),
                               ("late_over_early_pos", "grad_norm_pos", "late_over_early"),
                               ("late_over_early_neg", "grad_norm_neg", "late_over_early")):
        out[name] = mean_std([spike_stats(r["series"][series])[stat] for r in runs])
    out["final_greedy"] = mean_std([r["final_greedy"] for r in runs])
    out["n_seeds"] = len(runs)
    return out


def loss_ratio(run: dict) -> float:
    """Mean over rollout batches of the last optimizer step's loss / the first's (NaN without them)."""
    pairs = [(a, b) for a, b in zip(run["series"]["loss_first"], run["series"]["loss_last"]) if a and not math.isnan(a)]
    return statistics.fmean(b / a for a, b in pairs) if pairs else float("nan")


def summarise(runs: dict[str, dict[int, dict]], hot: dict[str, dict[int, dict]], target_method: str = "PPO") -> dict:
    out = {}
    for m, by_seed in runs.items():
        rs = list(by_seed.values())
        if not rs:
            continue
        p1, g = mean_std([r.get("pass1") for r in rs]), mean_std([r["final_greedy"] for r in rs])
        d = {"pass1_mean": p1[0], "pass1_std": p1[1], "greedy_mean": g[0], "greedy_std": g[1],
             "greedy_per_seed": [r["final_greedy"] for r in rs], "pass1_per_seed": [r.get("pass1") for r in rs],
             "mean_curve": mean_curve(rs), "samples_total": statistics.fmean(r["samples_total"] for r in rs),
             "wall_mean_s": mean_std([r["wall_s"] for r in rs])[0],
             "grad_default": grad_split(rs), "grad_hot": grad_split(list(hot.get(m, {}).values())),
             "loss_last_over_first": mean_std([loss_ratio(r) for r in rs])}
        out[m] = d
    target = out.get(target_method, {}).get("greedy_mean")
    for d in out.values():
        d["samples_to_target"] = samples_to_reach(d["mean_curve"], target) if target is not None else None
    return {"methods": out, "target": target, "target_method": target_method}


def plot(tables: dict, img: Path, lr_mult: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    files = []
    for name, tab in tables.items():
        if name == "fit" or not tab:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m, d in tab["methods"].items():
            xs, ys, sd = zip(*d["mean_curve"])
            ax.plot(xs, ys, marker="o", ms=3, label=m)
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.12)
        if tab.get("target") is not None:
            ax.axhline(tab["target"], color="gray", ls="--", lw=1, label=f"{tab['target_method']} final")
        ax.set_xlabel("rollout samples")
        ax.set_ylabel("held-out greedy accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(f"compare_{name}_accuracy.png")
        fig.savefig(img / files[-1], dpi=110)
        plt.close(fig)
    tab = tables.get("table1", {"methods": {}})
    for key, label in (("grad_default", "selected lr"), ("grad_hot", f"{lr_mult:g}x selected lr")):
        present = [m for m, d in tab["methods"].items() if d.get(key)]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 2.9), squeeze=False)
        for ax, m in zip(axes.flat, present):
            s = tab["methods"][m][key]
            steps = range(1, len(s["grad_norm"]) + 1)
            ax.plot(steps, s["grad_norm_pos"], label="A ≥ 0", color="tab:green")
            ax.plot(steps, s["grad_norm_neg"], label="A < 0", color="tab:red")
            ax.set_title(m, fontsize=10)
            ax.set_yscale("log")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"Gradient norm by advantage sign, {label} (first seed)")
        fig.tight_layout()
        files.append(f"compare_gradnorm_{'hot' if key == 'grad_hot' else 'default'}.png")
        fig.savefig(img / files[-1], dpi=110)
        plt.close(fig)
    return files


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def pm(ms: tuple[float, float], digits: int = 3) -> str:
    return fmt(ms[0]) if math.isnan(ms[0]) else f"{fmt(ms[0], digits)} ± {fmt(ms[1], digits)}"


def markdown(summary: dict, img_rel: str, files: list[str]) -> str:
    L = [f"_Generated by `{summary['command']}` on {summary['date']}: {summary['elapsed_min']:.1f} min elapsed, "
         f"{summary['wall_min']:.1f} min of summed run time ({summary['jobs']} run(s) at a time, 2-core CPU shared with other "
         f"jobs, {summary['threads']} torch thread per run)._", "", "**Setup.** " + summary["setup"], "",
         "### Learning rates picked on the validation split", "",
         f"Greedy accuracy on {summary['n_val']} training prompts held out from RL training, after {summary['select_steps']} "
         "steps, seed 0, for every (setting, method); ties go to the smaller lr; a pick at the edge of what was tried adds the next "
         "half-decade beyond it (— = not needed). `@verifier` = the rule-based reward.", "",
         "| method | " + " | ".join(f"lr {lr:g}" for lr in summary["grid"]) + " | picked |",
         "|---|" + "---|" * (len(summary["grid"]) + 1)]
    for k, accs in summary["selection"].items():
        L.append(f"| {k} | " + " | ".join(fmt(accs[str(lr)]) if str(lr) in accs else "—" for lr in summary["grid"]) + f" | {summary['lrs'][k]:g} |")
    sft = summary["sft"]
    for name, title in summary["titles"].items():
        tab = summary["tables"].get(name)
        L += ["", f"### {title}", "", f"Mean ± std over seeds {summary['seeds']}; pass@1 = `lco eval` on the 400 test problems "
              f"(k = 4, T = 0.6, top-p = 0.95); greedy = the loop's held-out greedy accuracy ({summary['eval_problems']} test "
              "problems) at the last step.", "", "| method | lr | pass@1 | greedy | rollout samples | wall / run |", "|---|---|---|---|---|---|",
              f"| SFT (start) | | {fmt(sft['pass1'])} | {fmt(sft['greedy'])} | 0 | |"]
        for m, d in tab["methods"].items():
            L.append(f"| {m} | {summary['lrs'][summary['keys'][name][m]]:g} | {fmt(d['pass1_mean'])} ± "
                     f"{fmt(d['pass1_std'])} | {fmt(d['greedy_mean'])} ± {fmt(d['greedy_std'])} | {d['samples_total']:.0f} "
                     f"| {d['wall_mean_s']:.0f} s |")
        if name != "table1" and f"compare_{name}_accuracy.png" in files:
            L += ["", f"![accuracy vs samples, {name}]({img_rel}/compare_{name}_accuracy.png)"]
    t1 = summary["tables"].get("table1")
    if t1:
        L += fig7(t1)
        L += ["", f"![accuracy vs samples]({img_rel}/{files[0]})", "", "### Figs. 4–6 analogue: gradient norm by advantage sign", "",
              f"Every Table 1 run at the selected lr and at {summary['lr_mult']:g}× it, mean ± std over seeds of per-run ratios: "
              "`max/med` = largest / median pre-clipping norm over the run, `late/early` = mean of the last quarter of steps / the "
              "first quarter (< 1: decays), split by the sign of the sampled token's advantage. `loss last/first` = mean over rollout "
              "batches of the last optimizer step's loss / the first's; with LCO's default 4 minibatches those steps see different "
              "tokens, so it is not a descent measure (the within-batch descent table below fits the same tokens at every step).", "",
              "| method | lr | max/med (all) | late/early A≥0 | late/early A<0 | loss last/first | final greedy |", "|---|---|---|---|---|---|---|"]
        for m, d in t1["methods"].items():
            for key, tag in (("grad_default", "selected"), ("grad_hot", f"{summary['lr_mult']:g}×")):
                g = d.get(key)
                if g:
                    L.append(f"| {m} | {tag} | {pm(g['max_over_median'], 2)} | {pm(g['late_over_early_pos'], 2)} "
                             f"| {pm(g['late_over_early_neg'], 2)} | {pm(d['loss_last_over_first'], 2) if key == 'grad_default' else ''} "
                             f"| {pm(g['final_greedy'])} |")
    fit = summary["tables"].get("fit", {}).get("methods", {})
    if fit:
        L += ["", f"### Within-batch descent: LCO at {summary['fit_epochs']} epochs × 1 minibatch", "",
              "Every seed, picked lr, the same tokens at every optimizer step of a rollout batch with z_old frozen. Mean ± std over "
              "seeds of the mean over rollout batches of loss_last / loss_first.", "",
              "| method | loss last/first | final greedy |", "|---|---|---|"]
        L += [f"| {m} | {pm(d['loss_last_over_first'], 2)} | {fmt(d['greedy_mean'])} ± {fmt(d['greedy_std'])} |" for m, d in fit.items()]
    L.append("")
    L += [f"![gradient norms]({img_rel}/{f})" for f in files if "gradnorm" in f]
    return "\n".join(L)


def fig7(t1: dict) -> list[str]:
    ppo = t1["methods"].get("PPO", {}).get("samples_to_target")
    L = ["", "### Fig. 7 analogue: rollout samples to reach PPO's final accuracy", "",
         f"Target: PPO's final seed-mean greedy accuracy {fmt(t1['target'])} (Table 1 runs; linear interpolation between "
         "evaluations). Paper: LCO-LCH ≈ 1/3, LCO-KLD ≈ 1/2 of PPO's samples.", "", "| method | samples | ÷ PPO's |", "|---|---|---|"]
    for m, d in t1["methods"].items():
        s = d["samples_to_target"]
        L.append(f"| {m} | {'not reached' if s is None else f'{s:.0f}'} | {fmt(s / ppo, 2) if s is not None and ppo else 'n/a'} |")
    return L


def write_doc(doc: Path, generated: str, begin: str = "<!-- BEGIN GENERATED -->", end: str = "<!-- END GENERATED -->") -> None:
    text = doc.read_text() if doc.exists() else "# LCO vs RL baselines on `tiny`\n"
    block = f"{begin}\n{generated}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text += f"\n{block}\n"
    doc.write_text(text)
