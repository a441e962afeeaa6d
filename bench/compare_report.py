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


def summarise(runs: dict[str, dict[int, dict]], hot: dict[str, dict], target_method: str = "PPO") -> dict:
    out = {}
    for m, by_seed in runs.items():
        rs = list(by_seed.values())
        if not rs:
            continue
        p1, g = mean_std([r.get("pass1") for r in rs]), mean_std([r["final_greedy"] for r in rs])
        d = {"pass1_mean": p1[0], "pass1_std": p1[1], "greedy_mean": g[0], "greedy_std": g[1],
             "greedy_per_seed": [r["final_greedy"] for r in rs], "mean_curve": mean_curve(rs),
             "samples_total": statistics.fmean(r["samples_total"] for r in rs),
             "wall_mean_s": mean_std([r["wall_s"] for r in rs])[0]}
        s0 = rs[0]["series"]
        for key, src in (("grad_default", s0), ("grad_hot", hot[m]["series"] if m in hot else None)):
            if src is not None and any(not math.isnan(x) for x in src["grad_norm_pos"]):
                d[key] = {**{k: src[k] for k in ("grad_norm", "grad_norm_pos", "grad_norm_neg")},
                          "stats": spike_stats(src["grad_norm"]), "stats_pos": spike_stats(src["grad_norm_pos"]),
                          "stats_neg": spike_stats(src["grad_norm_neg"]),
                          "final_greedy": (hot[m] if key == "grad_hot" else rs[0])["final_greedy"]}
        lf = [x for x in s0["loss_first"] if not math.isnan(x)]
        ll = [x for x in s0["loss_last"] if not math.isnan(x)]
        if lf:
            d["loss_last_over_first"] = statistics.fmean(b / a for a, b in zip(lf, ll) if a)
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
    tab = tables["table1"]
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
        fig.suptitle(f"Gradient norm by advantage sign, {label} (seed 0)")
        fig.tight_layout()
        files.append(f"compare_gradnorm_{'hot' if key == 'grad_hot' else 'default'}.png")
        fig.savefig(img / files[-1], dpi=110)
        plt.close(fig)
    return files


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(summary: dict, img_rel: str, files: list[str]) -> str:
    L = [f"_Generated by `{summary['command']}` on {summary['date']}: {summary['wall_min']:.1f} min of wall time "
         f"(2-core CPU, shared with other jobs, {summary['threads']} torch thread)._", "", "**Setup.** " + summary["setup"], "",
         "### Learning rates picked on the validation split", "",
         f"Greedy accuracy on {summary['n_val']} training prompts held out from RL training, after {summary['select_steps']} "
         "steps, seed 0; ties go to the smaller lr.", "", "| method | " + " | ".join(f"lr {lr:g}" for lr in summary["grid"]) + " | picked |",
         "|---|" + "---|" * (len(summary["grid"]) + 1)]
    for m, accs in summary["selection"].items():
        L.append(f"| {m} | " + " | ".join(fmt(accs.get(str(lr))) for lr in summary["grid"]) + f" | {summary['lrs'][m]:g} |")
    sft = summary["sft"]
    for name, title in (("table1", "Table 1 analogue: DPO-RM reward (LCO: dense `dpo` advantages)"),
                        ("table5", "Table 5 analogue: verifier reward (LCO: sparse advantages)")):
        tab = summary["tables"].get(name)
        if not tab:
            continue
        L += ["", f"### {title}", "", f"Mean ± std over seeds {summary['seeds']}; pass@1 = `lco eval` on the 400 test problems "
              f"(k = 4, T = 0.6, top-p = 0.95); greedy = the loop's held-out greedy accuracy ({summary['eval_problems']} test "
              "problems) at the last step.", "", "| method | lr | pass@1 | greedy | rollout samples | wall / run |", "|---|---|---|---|---|---|",
              f"| SFT (start) | | {fmt(sft['pass1'])} | {fmt(sft['greedy'])} | 0 | |"]
        for m, d in tab["methods"].items():
            L.append(f"| {m} | {summary['lrs'].get(m.replace('-sparse', ''), float('nan')):g} | {fmt(d['pass1_mean'])} ± "
                     f"{fmt(d['pass1_std'])} | {fmt(d['greedy_mean'])} ± {fmt(d['greedy_std'])} | {d['samples_total']:.0f} "
                     f"| {d['wall_mean_s']:.0f} s |")
    t1 = summary["tables"]["table1"]
    ppo = t1["methods"].get("PPO", {}).get("samples_to_target")
    L += ["", "### Fig. 7 analogue: rollout samples to reach PPO's final accuracy", "",
          f"Target: PPO's final seed-mean greedy accuracy {fmt(t1['target'])} (Table 1 runs; linear interpolation between "
          "evaluations). Paper: LCO-LCH ≈ 1/3, LCO-KLD ≈ 1/2 of PPO's samples.", "", "| method | samples | ÷ PPO's |", "|---|---|---|"]
    for m, d in t1["methods"].items():
        s = d["samples_to_target"]
        L.append(f"| {m} | {'not reached' if s is None else f'{s:.0f}'} | {fmt(s / ppo, 2) if s is not None and ppo else 'n/a'} |")
    L += ["", f"![accuracy vs samples]({img_rel}/{files[0]})", "", "### Figs. 4–6 analogue: gradient norm by advantage sign", "",
          "Seed 0 of the Table 1 runs at the selected lr and at "
          f"{summary['lr_mult']:g}× it. `max/med` = largest / median pre-clipping norm over the run, `late/early` = mean of the "
          "last quarter of steps / first quarter (< 1: decays). `loss last/first` = mean over rollout batches of the last "
          "optimizer step's loss / the first's (< 1: descent toward the frozen target within a batch).", "",
          "| method | lr | max/med (all) | late/early A≥0 | late/early A<0 | loss last/first | final greedy |", "|---|---|---|---|---|---|---|"]
    for m, d in t1["methods"].items():
        for key, tag in (("grad_default", "selected"), ("grad_hot", f"{summary['lr_mult']:g}×")):
            g = d.get(key)
            if g:
                L.append(f"| {m} | {tag} | {fmt(g['stats']['max_over_median'], 2)} | {fmt(g['stats_pos']['late_over_early'], 2)} "
                         f"| {fmt(g['stats_neg']['late_over_early'], 2)} | {fmt(d.get('loss_last_over_first') if key == 'grad_default' else None, 2)} "
                         f"| {fmt(g['final_greedy'])} |")
    fit = summary["tables"].get("fit", {}).get("methods", {})
    if fit:
        L += ["", f"### Within-batch descent: LCO at {summary['fit_epochs']} epochs × 1 minibatch", "",
              "Seed 0, picked lr, the same tokens at every optimizer step of a rollout batch with z_old frozen. Mean over "
              "rollout batches of loss_last / loss_first.", "",
              "| method | loss last/first | final greedy |", "|---|---|---|"]
        L += [f"| {m} | {fmt(d.get('loss_last_over_first'), 2)} | {fmt(d['greedy_mean'])} |" for m, d in fit.items()]
    L.append("")
    L += [f"![gradient norms]({img_rel}/{f})" for f in files if "gradnorm" in f]
    return "\n".join(L)


def write_doc(doc: Path, generated: str, begin: str = "<!-- BEGIN GENERATED -->", end: str = "<!-- END GENERATED -->") -> None:
    text = doc.read_text() if doc.exists() else "# LCO vs RL baselines on `tiny`\n"
    block = f"{begin}\n{generated}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text += f"\n{block}\n"
    doc.write_text(text)
