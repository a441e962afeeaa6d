"""The `lco report RUN_DIR` stage: report.md (tables) and PNG plots of the training curves and eval results.

report.md: the per-stage summary (key result, time, folder), the evaluation table (policy ×
benchmark, mean ± stderr), each stage's curves as first / last / best values, and the configuration
highlights. Curves come from each stage's metrics.jsonl (train: reward, loss, grad_norm with the
positive/negative split when logged — the paper's Figs. 4–6 view —, entropy, sampled_prob, kl_ref,
held-out accuracy); a metric logged at fewer than `MIN_POINTS` steps is not drawn (two points make
no curve) but listed as a table in report.md. The bar chart comes from eval/results.json (or
aggregate.json for multi-seed runs), each bar labelled with its value.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from lco_cli.config import STAGES
from lco_cli.errors import MissingArtifactError
from lco_cli.recipes.compare import PERCENT_METRICS, columns_of, load_run_results, results_table
from lco_cli.recipes.summary import (Curve, curve, eval_cells, fmt_seconds, fmt_value, pct, rl_verdict, stage_rows,
                                     summarize_run)
from lco_cli.runtime.rundir import atomic_write_text

#: A metric logged at fewer steps than this is a table in report.md, not a plot.
MIN_POINTS = 3

SFT_PANELS = [("loss", ["loss"]), ("grad_norm", ["grad_norm"])]
RM_PANELS = [("loss", ["loss"]), ("accuracy", ["accuracy"]), ("reward_margin", ["reward_margin"])]
TRAIN_PANELS = [
    ("reward_mean", ["reward_mean"]),
    ("loss", ["loss"]),
    ("grad_norm", ["grad_norm", "grad_norm_pos", "grad_norm_neg"]),
    ("logit_grad", ["logit_grad_sampled", "logit_grad_other"]),
    ("entropy", ["entropy"]),
    ("sampled_prob", ["sampled_prob"]),
    ("kl_ref", ["kl_ref"]),
    ("heldout_acc", ["heldout_acc"]),
]
STAGE_PANELS = {"sft": SFT_PANELS, "rm": RM_PANELS, "train": TRAIN_PANELS}

#: The curves summarised as first / last / best in report.md, per stage.
KEY_CURVES = {"sft": ["loss", "grad_norm"], "rm": ["loss", "accuracy", "reward_margin"],
              "train": ["heldout_acc", "reward_mean", "accuracy", "loss", "kl_ref", "entropy", "response_len"]}

#: Configuration highlights: the keys of each section a reader looks for first (full config: config.yaml).
HIGHLIGHTS = {
    "model": ["policy", "dtype", "lora.enabled"],
    "task": ["name", "source", "op", "digits"],
    "sft": ["init_from", "data.source", "lr", "batch_size", "epochs", "max_steps"],
    "rm": ["init_from", "pairs.source", "pairs.n_prompts", "beta", "lr", "batch_size", "max_steps"],
    "train": ["init_from", "algo", "objective", "advantage", "reward", "beta", "lr", "steps", "batch_size",
              "samples_per_prompt"],
    "eval": ["policies", "benchmarks", "samples", "limit", "temperature"],
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def drawable(rows: list[dict], panels) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The panels' metrics logged at ≥ MIN_POINTS steps (drawn), and those logged at fewer (a table)."""
    drawn, short = [], []
    for name, keys in panels:
        keep = []
        for k in keys:
            c = curve(rows, k)
            if c is None:
                continue
            (keep if len(c.points) >= MIN_POINTS else short).append(k)
        if keep:
            drawn.append((name, keep))
    return drawn, short


def plot_curves(rows: list[dict], panels, title: str, out: Path) -> list[str]:
    """One panel per metric group, titled, with axis labels; only metrics logged at ≥ MIN_POINTS steps.
    Returns the metrics too short to draw (every one when no PNG is written)."""
    panels, short = drawable(rows, panels)
    if not panels:
        return short
    plt = _plt()
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for k in keys:
            pts = curve(rows, k).points
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=k)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return short


def plot_stability(rows: list[dict], title: str, out: Path) -> bool:
    """The gradient-gap telemetry (`train.telemetry.gradient_gap`; docs/stability.md): the Gap Alignment Δμ and
    cos∠(Δθ, g⁺ − g⁻), the step η, the eq. 18 step-size gauge, and J against M(K) with the theory's bound
    J₀/(J₀ + (1 − J₀)e^(−M/2)) and the held-out accuracy. False when no row has the metrics."""
    gap = [r for r in rows if "gap_eta" in r]
    if not gap:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))

    def series(ax, key, label=None, **kw):
        pts = [(r["step"], r[key]) for r in gap if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=label or key, **kw)
        return pts

    series(axes[0], "gap_alignment", "Δμ (gap alignment)")
    series(axes[0], "gap_cos", "cos∠(Δθ, g⁺−g⁻)")
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].set_title("alignment of the update")
    series(axes[1], "gap_eta", "η = ‖Δθ‖")
    axes[1].set_title("step taken per rollout batch")
    if series(axes[2], "gap_gauge", "η / (Δμ(1−J)/T)"):
        axes[2].set_yscale("log")
    axes[2].set_title("step-size gauge (eq. 18, order of magnitude)")
    ms = [(r["gap_M"], r) for r in gap if r.get("gap_M") is not None]
    axes[3].plot([m for m, _ in ms], [r["gap_J"] for _, r in ms], ".", label="J (batch success)")
    axes[3].plot([m for m, _ in ms], [r["gap_J_bound"] for _, r in ms], "-", label="bound J₀/(J₀+(1−J₀)e^(−M/2))")
    held = [(m, r["heldout_acc"]) for m, r in ms if r.get("heldout_acc") is not None]
    if held:
        axes[3].plot(*zip(*held), "s", label="held-out accuracy")
    axes[3].set_xlabel("M(K) = Σ[Δμ]₊η")
    axes[3].set_title("success rate vs cumulative alignment")
    for ax in axes[:3]:
        ax.set_xlabel("step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_eval(results: list[dict], out: Path, title: str = "evaluation") -> bool:
    """Grouped bars, one group per benchmark metric, each bar labelled with its value: percent
    metrics (pass@1, WR, LC-WR, accuracy) on one axis, raw rewards (`reward/<name>`) on a second,
    since their scales differ. Error bars: ± stderr (± std across seeds for multi-seed runs)."""
    table = results_table({"run": results})
    rows = table.rows
    if not rows:
        return False
    plt = _plt()
    cols = columns_of(rows)
    err_kind = " / ".join(sorted({r["err_kind"] for r in rows}))
    panels = [(unit, [c for c in cols if (c.metric in PERCENT_METRICS) == is_pct])
              for unit, is_pct in (("percent", True), ("reward", False))]
    panels = [(unit, cs) for unit, cs in panels if cs]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    width = 0.8 / len(policies)
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(max(5, 1.6 * len(cols) * len(policies) + 1.5), 4))
    for ax, (unit, cs) in zip(axes.flat, panels):
        scale = 100 if unit == "percent" else 1
        for i, pol in enumerate(policies):
            xs, ys, es = [], [], []
            for j, c in enumerate(cs):
                for r in rows:
                    if (r["policy"], r["benchmark"], r["metric"]) == (pol, c.benchmark, c.metric):
                        xs.append(j + i * width)
                        ys.append(scale * r["mean"])
                        es.append(scale * r["err"])
            bars = ax.bar(xs, ys, width, yerr=es, capsize=3, label=pol)
            ax.bar_label(bars, labels=[f"{y:.1f}\n±{e:.1f}" if unit == "percent" else f"{y:.3f}\n±{e:.3f}"
                                       for y, e in zip(ys, es)], fontsize=7, padding=2)
        ax.set_xticks([j + width * (len(policies) - 1) / 2 for j in range(len(cs))], [c.label for c in cs])
        ax.set_xlabel("benchmark")
        ax.set_ylabel("pass@1 (%)" if {c.metric for c in cs} == {"pass@1"} else ("%" if unit == "percent" else "reward"))
        values = [scale * r["mean"] + sign * scale * r["err"] for r in rows for sign in (1, -1)
                  if any((r["benchmark"], r["metric"]) == (c.benchmark, c.metric) for c in cs)]
        top, bottom = max(values + [0.0]), min(values + [0.0])
        span = (top - bottom) or (1.0 if unit == "percent" else 0.1)
        ax.set_ylim(bottom - (0.2 * span if bottom < 0 else 0), top + 0.25 * span)  # room for the labels
        ax.set_title(f"{'percent metrics' if unit == 'percent' else 'rewards'} (mean ± {err_kind})")
        ax.legend(fontsize=8, title="policy", title_fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- report.md


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A Markdown table; `align`: one 'l' / 'r' per column (default: first left, others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_metric(metric: str, value: float) -> str:
    if metric in ("heldout_acc", "accuracy", "pair_accuracy"):
        return f"{100 * value:.1f} %"
    return f"{value:.4g}"


def curves_table(curves: list[Curve]) -> str:
    """First / last / best of each curve (best = max, or min for losses and norms), with their steps."""
    def at(point: tuple[int, float], metric: str) -> str:
        return f"{fmt_metric(metric, point[1])} (step {point[0]})"

    rows = []
    for c in curves:
        best = (f"{at(c.best, c.metric)}, {'max' if c.higher_is_better else 'min'}" if c.best is not None
                else f"range {fmt_metric(c.metric, c.low[1])} – {fmt_metric(c.metric, c.high[1])}")
        rows.append([c.metric, str(len(c.points)), at(c.first, c.metric), at(c.last, c.metric), best])
    return md_table(["metric", "points", "first", "last", "best (or range)"], rows, "lrlll")


def points_table(rows: list[dict], metrics: list[str]) -> str:
    """Every logged value of `metrics`, one row per step: the text form of curves too short to draw."""
    steps = sorted({int(r["step"]) for r in rows if "step" in r and any(r.get(m) is not None for m in metrics)})
    by_step: dict[int, dict] = {}
    for r in rows:
        if "step" in r:
            by_step.setdefault(int(r["step"]), {}).update({m: r[m] for m in metrics if r.get(m) is not None})
    body = [[str(s)] + [fmt_metric(m, by_step[s][m]) if m in by_step[s] else "–" for m in metrics] for s in steps]
    return md_table(["step", *metrics], body)


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def config_highlights(run_dir: Path) -> list[list[str]]:
    """(section, settings) rows: each stage's own config.yaml (what it ran with), else the run's."""
    run_cfg = _read_yaml(run_dir / "config.yaml")
    out = []
    for section, keys in HIGHLIGHTS.items():
        if section in STAGES and not (run_dir / section / "config.yaml").exists():
            continue  # a stage that never ran: its settings describe nothing in this run
        cfg = _read_yaml(run_dir / section / "config.yaml") or run_cfg.get(section) or {}
        items = []
        for key in keys:
            value = _lookup(cfg, key)
            if value is None or value == [] or value == {}:
                continue
            shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            items.append(f"{key} = {shown}")
        if items:
            out.append([section, "; ".join(items)])
    if "seed" in run_cfg:
        out.append(["seed", str(run_cfg["seed"])])
    return out


def _stage_section(run_dir: Path, stage: str, out: Path) -> list[str]:
    rows = stage_rows(run_dir, stage)
    if not rows:
        return []
    lines = [f"## {stage}", ""]
    curves = [c for c in (curve(rows, k) for k in KEY_CURVES[stage]) if c is not None]
    if curves:
        lines += [curves_table(curves), ""]
    png = f"{stage}_curves.png"
    short = plot_curves(rows, STAGE_PANELS[stage], f"{stage} curves ({run_dir.name})", out / png)
    if (out / png).exists():
        lines += [f"![{stage} curves]({png})", ""]
    if short:
        lines += [f"Logged at fewer than {MIN_POINTS} steps, so not drawn: {', '.join(short)}.", "",
                  points_table(rows, short), ""]
    if stage == "train" and plot_stability(rows, f"gradient gap ({run_dir.name})", out / "train_stability.png"):
        lines += ["![gradient-gap telemetry](train_stability.png)", ""]
    return lines


def write_report(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise MissingArtifactError(f"run directory not found: {run_dir}")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    for stale in out.glob("*.png"):  # a plot this run no longer draws must not linger from an earlier report
        stale.unlink()
    lines = [f"# Report: {run_dir.name}", ""]
    summary = summarize_run(run_dir)
    done = [r for r in summary if r.state != "not run"]
    if done:
        lines += ["## Stages", "",
                  md_table(["stage", "status", "key result", "time", "folder"],
                           [[r.stage, r.state, r.result, fmt_seconds(r.seconds), f"`{r.folder}`"] for r in done], "lllrl"), ""]
    try:
        results = load_run_results(run_dir)
    except MissingArtifactError:
        results = []
    if results:
        table = results_table({run_dir.name: results})
        lines += ["## Evaluation", "", table.markdown().rstrip(), ""]
        verdicts = rl_verdict(eval_cells(run_dir))
        if verdicts:
            lines += [md_table(["benchmark", "metric", "sft", "train", "train − sft", "in errors"],
                               [[s.benchmark, s.metric, s.text(), t.text(), fmt_value(s.metric, t.mean - s.mean),
                                 f"{z:+.1f}"] for s, t, z in verdicts], "llrrrr"), "",
                      "`in errors`: the difference over the combined error (√(err_sft² + err_train²)); beyond ±2 it is "
                      "unlikely to be noise.", ""]
        if plot_eval(results, out / "eval.png", f"evaluation ({run_dir.name})"):
            lines += ["![evaluation](eval.png)", ""]
    seeds = sorted((d for d in run_dir.glob("seed-*") if d.is_dir() and d.name[5:].isdigit()), key=lambda d: int(d.name[5:]))
    if seeds:  # `lco run --seeds`: the key numbers of each seed's stages (`lco report` on a seed folder for the rest)
        per_seed = [(d, {r.stage: r for r in summarize_run(d)}) for d in seeds]
        lines += ["## Seeds", "", md_table(
            ["seed", "sft held-out accuracy", "rm held-out pair accuracy", "train held-out accuracy (last)", "folder"],
            [[d.name[5:], *(pct(rows[s].value) for s in ("sft", "rm", "train")), f"`{d}`"] for d, rows in per_seed], "lrrrl"), ""]
    stage_lines = [line for stage in ("sft", "rm", "train") for line in _stage_section(run_dir, stage, out)]
    lines += stage_lines
    if not done and not results and not stage_lines:
        raise MissingArtifactError(f"nothing to report in {run_dir}: no stage has run (no status.json, metrics.jsonl "
                                   "or eval results)")
    highlights = config_highlights(run_dir)
    if highlights:
        lines += ["## Configuration", "", md_table(["section", "settings"], highlights, "ll"), "",
                  f"The full resolved preset: `{run_dir / 'config.yaml'}`; each stage's own: `<stage>/config.yaml`.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines).rstrip() + "\n")
    return out
