"""The `lco report RUN_DIR` stage: PNG plots of the training curves and eval results, plus report.md.

Curves come from each stage's metrics.jsonl (train: reward, loss, grad_norm with the
positive/negative split when logged — the paper's Figs. 4–6 view —, entropy, sampled_prob, kl_ref,
held-out accuracy); the bar chart from eval/results.json (or aggregate.json for multi-seed runs).
"""
from __future__ import annotations

from pathlib import Path

from lco_cli.errors import MissingArtifactError
from lco_cli.recipes.compare import PERCENT_METRICS, columns_of, load_run_results, results_table
from lco_cli.runtime.rundir import MetricsLog, atomic_write_text

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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict], panels, title: str, out: Path) -> bool:
    panels = [(name, [k for k in keys if any(k in r for r in rows)]) for name, keys in panels]
    panels = [(n, ks) for n, ks in panels if ks]
    if not panels:
        return False
    plt = _plt()
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if k in r and r[k] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=k)
        ax.set_title(name)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


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


def plot_eval(results: list[dict], out: Path) -> bool:
    """Grouped bars, one group per benchmark metric: percent metrics (pass@1, WR, LC-WR, accuracy)
    on one axis, raw rewards (`reward/<name>`) on a second, since their scales differ."""
    rows = results_table({"run": results}).rows
    if not rows:
        return False
    plt = _plt()
    cols = columns_of(rows)
    panels = [(unit, [c for c in cols if (c.metric in PERCENT_METRICS) == is_pct])
              for unit, is_pct in (("percent", True), ("reward", False))]
    panels = [(unit, cs) for unit, cs in panels if cs]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    width = 0.8 / len(policies)
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(max(4, 1.5 * len(cols) * len(policies)), 3.5))
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
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=pol)
        ax.set_xticks([j + width * (len(policies) - 1) / 2 for j in range(len(cs))], [c.label for c in cs])
        ax.set_ylabel("pass@1 (%)" if {c.metric for c in cs} == {"pass@1"} else ("%" if unit == "percent" else "reward"))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def write_report(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise MissingArtifactError(f"run directory not found: {run_dir}")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    lines = [f"# Report: {run_dir.name}", ""]
    for stage, panels in (("sft", [("loss", ["loss"]), ("grad_norm", ["grad_norm"])]),
                          ("rm", [("loss", ["loss"]), ("accuracy", ["accuracy"]), ("reward_margin", ["reward_margin"])]),
                          ("train", TRAIN_PANELS)):
        rows = MetricsLog(run_dir / stage / "metrics.jsonl").rows()
        if rows and plot_curves(rows, panels, f"{stage} ({run_dir.name})", out / f"{stage}_curves.png"):
            lines += [f"## {stage}", "", f"![{stage} curves]({stage}_curves.png)", ""]
            if stage == "train" and plot_stability(rows, f"gradient gap ({run_dir.name})", out / "train_stability.png"):
                lines += ["![gradient-gap telemetry](train_stability.png)", ""]
            extra = run_dir / stage / "eval.json"
            if extra.exists():
                lines += ["```json", extra.read_text().strip(), "```", ""]
    try:
        results = load_run_results(run_dir)
    except MissingArtifactError:
        results = []
    if plot_eval(results, out / "eval.png"):
        lines += ["## Evaluation", "", "![eval](eval.png)", "", results_table({run_dir.name: results}).markdown()]
    if len(lines) == 2:
        raise MissingArtifactError(f"nothing to report in {run_dir}: no metrics.jsonl and no eval results")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out


