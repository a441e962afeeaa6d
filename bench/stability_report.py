"""Analysis of a `bench/stability_map.py` map: per-run metrics, the critical lr, the gradient-norm growth by
advantage sign, the gradient-gap gauge at the onset of collapse, the plot and the generated block of
docs/stability.md. No training here."""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_report as cr  # noqa: E402

#: gradient-gap quantities read at the onset of collapse
GAP_KEYS = ("gap_gauge", "gap_alignment", "gap_eta")


def read_run(run: Path) -> dict:
    """`compare_report.read_run` plus the rows of the steps with gradient-gap telemetry."""
    out = cr.read_run(run)
    rows = [json.loads(line) for line in (run / "train/metrics.jsonl").read_text().splitlines() if line.strip()]
    out["gap"] = [{k: r[k] for k in ("step", *GAP_KEYS) if k in r} for r in rows if "gap_eta" in r]
    out["steps"] = max((r.get("step", 0) for r in rows), default=0)
    return out


def start_acc(curve) -> float:
    """The step-0 held-out greedy accuracy (the SFT start), NaN without one."""
    return next((acc for step, _, acc in curve if step == 0), float("nan"))


def onset_step(curve, start: float) -> int | None:
    """The first evaluated step after the start whose held-out accuracy is below `start`; None if none."""
    return next((step for step, _, acc in curve if step > 0 and acc < start), None)


def gap_at(gap: list[dict], step: int) -> dict | None:
    """The last gradient-gap row measured at or before `step` (that step's update precedes its evaluation)."""
    rows = [g for g in gap if g["step"] <= step]
    return rows[-1] if rows else None


def critical(points: list[tuple[float, float, float]], start: float) -> dict:
    """The critical lr from (lr multiple, lr, seed-mean final accuracy) per grid point: scanning up from the
    picked lr, the largest lr before the first one whose seed-mean final accuracy falls below `start` (so every
    lr up to it stayed >= start). `recovers`: some larger lr is back at >= start (a non-monotone map)."""
    pts = sorted(points)
    fell = [i for i, (_, _, acc) in enumerate(pts) if acc < start]
    if not fell:
        return {"mult": pts[-1][0], "lr": pts[-1][1], "never_fell": True, "below_at_picked": False, "recovers": False}
    i = fell[0]
    return {"mult": pts[i - 1][0] if i else None, "lr": pts[i - 1][1] if i else None, "never_fell": False,
            "below_at_picked": i == 0, "recovers": any(acc >= start for _, _, acc in pts[i + 1:])}


def critical_text(c: dict, top_mult: float) -> tuple[str, str]:
    """(absolute lr, multiple of the picked lr) as table cells."""
    if c["below_at_picked"]:
        return "< picked", "< 1× (below the start at the picked lr)"
    mult = f"{c['mult']:.3g}×"
    if c["never_fell"]:
        return f"≥ {c['lr']:.3g}", f"≥ {top_mult:.3g}× (never fell below)"
    return f"{c['lr']:.3g}", mult + (" (a larger lr is back above)" if c["recovers"] else "")


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else None


def plateau_step(curve, tol: float) -> int | None:
    """The first evaluated step s from which the held-out curve has flattened: the 3-evaluation moving average stays
    within `tol` below the final level (the mean of the last 3 evaluations) from s to the end, and the least-squares
    slope over the later half of the run, times that half's length, is at most `tol` (no climb left). None: not flat
    within the curve (or fewer than 4 evaluations after the start)."""
    pts = [(s, a) for s, _, a in curve if s > 0]
    if len(pts) < 4:
        return None
    accs = [a for _, a in pts]
    smooth = [statistics.fmean(accs[max(0, i - 1):i + 2]) for i in range(len(accs))]
    final = statistics.fmean(accs[-3:])
    late = pts[len(pts) // 2:]
    xs, ys = [s for s, _ in late], [a for _, a in late]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    if slope * (xs[-1] - xs[0]) > tol:
        return None
    return next(pts[i][0] for i in range(len(pts)) if all(v >= final - tol for v in smooth[i:]))


def binomial_sd(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-6) / max(n, 1))


def summarise_setting(runs: dict[str, dict[float, dict[int, dict]]], lrs: dict[str, dict[float, float]], start: float) -> dict:
    """`runs[method][mult][seed]` (read_run dicts) of one setting -> the map's numbers (JSON-able)."""
    out: dict = {"start": start, "methods": {}}
    mults = sorted({m for by_mult in runs.values() for m in by_mult})
    # per lr multiple: every run of the setting that stayed >= the start (the comparison for the collapsed ones)
    stable_at = {x: [r for by_mult in runs.values() for r in by_mult.get(x, {}).values() if r["final_greedy"] >= start] for x in mults}
    for method, by_mult in runs.items():
        rows = {}
        for x in sorted(by_mult):
            rs = list(by_mult[x].values())
            acc = cr.mean_std([r["final_greedy"] for r in rs])
            g = cr.grad_split(rs)
            collapsed = []
            for seed, r in by_mult[x].items():
                if r["final_greedy"] >= start:
                    continue
                s = onset_step(r["curve"], start)
                at = gap_at(r["gap"], s) if s is not None else None
                collapsed.append({"seed": seed, "onset_step": s, "gap_step": at["step"] if at else None,
                                  **{k: (at or {}).get(k) for k in GAP_KEYS}})
            ref_steps = [c["onset_step"] for c in collapsed if c["onset_step"] is not None]
            ref = []
            if ref_steps:  # the stable runs at this lr multiple, read at the collapsed runs' (median) onset step
                s_ref = int(statistics.median(ref_steps))
                ref = [gap_at(r["gap"], s_ref) for r in stable_at[x]]
                ref = [a for a in ref if a]
            rows[f"{x:g}"] = {
                "mult": x, "lr": lrs[method][x], "n_seeds": len(rs), "final_per_seed": {str(s): r["final_greedy"] for s, r in by_mult[x].items()},
                "final_mean": acc[0], "final_std": acc[1],
                "late_over_early_neg": g["late_over_early_neg"] if g else None, "late_over_early_pos": g["late_over_early_pos"] if g else None,
                "collapsed": collapsed,
                "onset": {k: median(c[k] for c in collapsed) for k in ("onset_step", *GAP_KEYS)},
                "stable_ref": {"n": len(ref), "step": int(statistics.median(ref_steps)) if ref_steps else None,
                               **{k: median(a.get(k) for a in ref) for k in GAP_KEYS}},
                "median_gauge": median(g2.get("gap_gauge") for r in rs for g2 in r["gap"]),
                "gap_measured": any(r["gap"] for r in rs),
                "wall_mean_s": cr.mean_std([r["wall_s"] for r in rs])[0],
            }
        crit = critical([(d["mult"], d["lr"], d["final_mean"]) for d in rows.values()], start)
        out["methods"][method] = {"lrs": rows, "critical": crit}
    return out


def gauge_agreement(setting: dict, threshold: float = 1.0) -> dict:
    """Does the step-size gauge separate the stable grid points from the collapsed ones? Per (method, lr) point:
    its median `gap_gauge` over measured steps and seeds, and whether its seed-mean final accuracy fell below the
    start. Eq. 18 says a step is safe when η ≲ Δμ(1 − J)/T up to unknown constants, i.e. gauge ≲ O(1): the
    2 × 2 count at `threshold` and the gauge ranges of both groups say whether the measured gauge agrees."""
    stable, collapsed = [], []
    for d in setting["methods"].values():
        for r in d["lrs"].values():
            if r["median_gauge"] is None:
                continue
            (collapsed if r["final_mean"] < setting["start"] else stable).append(r["median_gauge"])
    count = lambda xs: {"n": len(xs), "above": sum(g > threshold for g in xs),  # noqa: E731
                        "min": min(xs) if xs else None, "median": median(xs), "max": max(xs) if xs else None}
    return {"threshold": threshold, "stable": count(stable), "collapsed": count(collapsed)}


def agreement_markdown(a: dict) -> list[str]:
    t, s, c = a["threshold"], a["stable"], a["collapsed"]
    return ["**Does the gauge predict collapse?** Each (method, lr) point's median `gap_gauge` (η / (Δμ(1 − J)/T), over its "
            "measured steps and seeds), by outcome (seed-mean final accuracy ≥ or < the start). Eq. 18 puts the safe step at "
            f"gauge ≲ O(1) with unknown constants; the split at {t:g}:", "",
            f"| outcome | points | gauge > {t:g} | min | median | max |", "|---|---|---|---|---|---|",
            f"| stable | {s['n']} | {s['above']} | {g3(s['min'])} | {g3(s['median'])} | {g3(s['max'])} |",
            f"| collapsed | {c['n']} | {c['above']} | {g3(c['min'])} | {g3(c['median'])} | {g3(c['max'])} |", ""]


# --------------------------------------------------------------------------- plot and markdown


def plot(settings: dict[str, dict], titles: dict[str, str], path: Path) -> None:
    """Final held-out greedy accuracy vs lr multiple of the picked lr, one panel per setting, seed mean ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n in settings if settings[n]["methods"]]
    widths = [max(1.0, len(settings[n]["methods"]) / 4) for n in names]
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * sum(widths) / max(len(names), 1) + 1.5 * len(names), 4.3),
                             squeeze=False, sharey=True, gridspec_kw={"width_ratios": widths})
    markers = "osD^vP*Xh<>"
    for ax, name in zip(axes.flat, names):
        st = settings[name]
        for i, (m, d) in enumerate(st["methods"].items()):
            pts = sorted(d["lrs"].values(), key=lambda r: r["mult"])
            ax.errorbar([p["mult"] for p in pts], [p["final_mean"] for p in pts], yerr=[p["final_std"] for p in pts],
                        marker=markers[i % len(markers)], ms=4, capsize=2, lw=1.2, label=m.split("@")[0], ls="-" if m.startswith("LCO") else "--")
        ax.axhline(st["start"], color="gray", ls=":", lw=1.2, label="SFT start")
        ax.set_xscale("log")
        ax.set_xlabel("lr / the method's picked lr")
        ax.set_title(f"{titles.get(name, name)}, {st['start']:.3f} at the start", fontsize=9)
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("final held-out greedy accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_ms(mean_std) -> str:
    return "n/a" if not mean_std else cr.pm(tuple(mean_std), 2)


def g3(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def pilot_markdown(pilot: dict) -> list[str]:
    if not pilot.get("runs"):
        return []
    steps = sorted({s for r in pilot["runs"].values() for s, _, _ in r["curve"]})
    L = ["### Run length: the pilot", "",
         f"{', '.join(k + ' at lr ' + format(r['lr'], 'g') for k, r in pilot['runs'].items())}, seed 0, {pilot['steps']} steps, held-out greedy "
         f"accuracy every {pilot['eval_every']} steps ({pilot['eval_problems']} problems). Flat from step s = the 3-evaluation moving "
         f"average stays from s on within {pilot['tol']:.3f} below the final level (mean of the last 3 evaluations), and "
         "the least-squares slope over the later half of the run times its length ≤ that (no climb left); the tolerance is one binomial "
         "standard deviation of one evaluation at the pilot's final accuracy.", "",
         "| step | " + " | ".join(pilot["runs"]) + " |", "|---|" + "---|" * len(pilot["runs"])]
    for s in steps:
        L.append(f"| {s} | " + " | ".join(cr.fmt(dict((st, a) for st, _, a in r["curve"]).get(s)) for r in pilot["runs"].values()) + " |")
    L.append("| **flat from** | " + " | ".join(str(r["plateau"]) if r["plateau"] is not None else "not flat" for r in pilot["runs"].values()) + " |")
    L += ["", pilot["verdict"], ""]
    return L


def markdown(summary: dict, img_rel: str) -> str:
    L = []
    for part in summary["parts"].values():
        L += [f"## {part['title']}", "",
              f"_Generated by `{part['command']}` on {part['date']}: {part['elapsed_min']:.1f} min elapsed, {part['wall_min']:.1f} min "
              f"of summed run time over {part['n_runs']} runs ({part['jobs']} at a time, {part['threads']} torch thread each)._", "",
              "**Setup.** " + part["setup"], ""]
        L += pilot_markdown(part.get("pilot", {}))
        for name, st in part["settings"].items():
            if not st["methods"]:
                continue
            mults = sorted({d["mult"] for m in st["methods"].values() for d in m["lrs"].values()})
            top = mults[-1]
            L += [f"### {part['titles'][name]}", "",
                  f"Final held-out greedy accuracy (step {part['steps']}), mean ± std over seeds {part['seeds']}, at multiples of each method's "
                  f"picked lr; SFT start (step 0) **{st['start']:.3f}**. Critical lr: scanning up from the picked lr, the largest lr before "
                  "the first whose seed-mean final accuracy falls below the start.", "",
                  "| method | picked lr | " + " | ".join(f"{x:.3g}×" for x in mults) + " | critical lr | critical ÷ picked |",
                  "|---|---|" + "---|" * (len(mults) + 2)]
            for m, d in st["methods"].items():
                cells = [cr.pm((d["lrs"][f"{x:g}"]["final_mean"], d["lrs"][f"{x:g}"]["final_std"])) if f"{x:g}" in d["lrs"] else "—" for x in mults]
                picked = d["lrs"][f"{mults[0]:g}"]["lr"] / mults[0] if f"{mults[0]:g}" in d["lrs"] else float("nan")
                abs_, rel = critical_text(d["critical"], top)
                L.append(f"| {m} | {picked:.3g} | " + " | ".join(cells) + f" | {abs_} | {rel} |")
            if part.get("images", {}).get(name):
                L += ["", f"![final accuracy vs lr]({img_rel}/{part['images'][name]})"]
            L += ["", "**Gradient norm by advantage sign.** late/early = mean of the last quarter of steps / the first quarter of "
                  "`grad_norm_neg` (A < 0) and `grad_norm_pos` (A ≥ 0), per run, mean ± std over seeds (`compare_report.grad_split`); "
                  "> 1: grows.", "", "| method | " + " | ".join(f"{x:.3g}× A<0 / A≥0" for x in mults) + " |", "|---|" + "---|" * len(mults)]
            for m, d in st["methods"].items():
                cells = []
                for x in mults:
                    r = d["lrs"].get(f"{x:g}")
                    cells.append("—" if not r else f"{fmt_ms(r['late_over_early_neg'])} / {fmt_ms(r['late_over_early_pos'])}")
                L.append(f"| {m} | " + " | ".join(cells) + " |")
            L += ["", "**Gradient-gap gauge at the onset of collapse.** A run collapses when its final accuracy is below the start; its "
                  "onset is the first evaluated step whose accuracy is below the start, and `gap_gauge` (η / threshold), "
                  "`gap_alignment` (Δμ) and `gap_eta` (η) are read at the last gradient-gap measurement at or before it (medians over "
                  "the collapsed seeds). `stable` = the runs of this setting at the same lr multiple (any method) that stayed ≥ the start, "
                  "read at the collapsed runs' median onset step (n = how many). `median gauge` = over every measured step and seed "
                  "(the gauge is absent where Δμ ≤ 0 or J = 1).", "",
                  "| method | lr × | collapsed | onset step | gauge | Δμ | η | stable n | stable gauge | stable Δμ | stable η | median gauge |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for m, d in st["methods"].items():
                for key, r in sorted(d["lrs"].items(), key=lambda kv: kv[1]["mult"]):
                    o, s = r["onset"], r["stable_ref"]
                    n_c = len(r["collapsed"])
                    gap_cells = ([g3(o[k]) for k in ("gap_gauge", "gap_alignment", "gap_eta")] if n_c else ["", "", ""])
                    ref_cells = ([str(s["n"])] + [g3(s[k]) for k in ("gap_gauge", "gap_alignment", "gap_eta")] if n_c else ["", "", "", ""])
                    L.append(f"| {m} | {r['mult']:.3g} | {n_c}/{r['n_seeds']} | {g3(o['onset_step']) if n_c else ''} | " + " | ".join(gap_cells)
                             + " | " + " | ".join(ref_cells) + f" | {g3(r['median_gauge']) if r['gap_measured'] else 'not measured'} |")
            L.append("")
            L += agreement_markdown(gauge_agreement(st))
    return "\n".join(L)
