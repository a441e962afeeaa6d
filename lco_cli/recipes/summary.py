"""What a run directory holds, stage by stage, as typed rows: the summary `lco run` ends with and
the tables of `lco report`.

Everything is read back from the run directory (status.json, eval.json, metrics.jsonl,
eval/results.json), so a stage skipped as done shows the numbers it recorded when it ran.

Key result per stage: SFT's held-out greedy accuracy, the RM's held-out pair accuracy, train's
held-out accuracy (start → end, best) and reward, eval's metric per policy ± stderr.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from lco_cli.config import STAGES
from lco_cli.recipes.compare import PERCENT_METRICS, metric_of
from lco_cli.runtime.rundir import STATUS_FILE, MetricsLog


@dataclass
class Curve:
    """One metric of a stage's metrics.jsonl over steps."""

    metric: str
    points: list[tuple[int, float]]
    higher_is_better: bool | None  # None: no better direction (entropy, response length, gradient norm)

    @property
    def first(self) -> tuple[int, float]:
        return self.points[0]

    @property
    def last(self) -> tuple[int, float]:
        return self.points[-1]

    @property
    def best(self) -> tuple[int, float] | None:
        if self.higher_is_better is None:
            return None
        pick = max if self.higher_is_better else min
        return pick(self.points, key=lambda p: p[1])

    @property
    def low(self) -> tuple[int, float]:
        return min(self.points, key=lambda p: p[1])

    @property
    def high(self) -> tuple[int, float]:
        return max(self.points, key=lambda p: p[1])


@dataclass
class EvalCell:
    """One policy × benchmark × metric of eval/results.json (or aggregate.json: err is the std across seeds)."""

    policy: str
    benchmark: str
    metric: str
    mean: float
    err: float
    n: int | None

    @property
    def percent(self) -> bool:
        return self.metric in PERCENT_METRICS

    def text(self) -> str:
        return f"{fmt_value(self.metric, self.mean)} ± {fmt_value(self.metric, self.err)}"


@dataclass
class StageSummary:
    """One row of the summary: the stage's state, its key result, its time, its folder."""

    stage: str
    state: str                 # done | interrupted | failed | running | not run
    result: str                # the key result, for a person
    seconds: float | None
    folder: Path
    value: float | None = None  # the key number as a fraction (sft / train held-out accuracy, RM pair accuracy)
    action: str | None = None   # what this `lco run` did with it: run | resume | restart | skip

    def as_json(self) -> dict:
        return {**asdict(self), "folder": str(self.folder)}


@dataclass
class NextStep:
    command: str
    why: str


# --------------------------------------------------------------------------- formatting


def fmt_value(metric: str, value: float) -> str:
    return f"{100 * value:.1f}" if metric in PERCENT_METRICS else f"{value:.3f}"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --------------------------------------------------------------------------- reading a run


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


#: Metrics of metrics.jsonl with a better direction (best = max / min); the others show their range.
HIGHER_IS_BETTER = ("heldout_acc", "accuracy", "pair_accuracy", "reward_mean", "reward_margin")
LOWER_IS_BETTER = ("loss",)


def curve(rows: list[dict], metric: str) -> Curve | None:
    pts = [(int(r["step"]), float(r[metric])) for r in rows
           if isinstance(r.get(metric), (int, float)) and not isinstance(r.get(metric), bool)
           and math.isfinite(r[metric]) and "step" in r]
    if not pts:
        return None
    better = True if metric in HIGHER_IS_BETTER else False if metric.startswith(LOWER_IS_BETTER) else None
    return Curve(metric, pts, better)


def stage_rows(run_dir: Path, stage: str) -> list[dict]:
    return MetricsLog(run_dir / stage / "metrics.jsonl").rows()


def eval_cells(run_dir: Path) -> list[EvalCell]:
    """aggregate.json (multi-seed) or eval/results.json; [] when neither exists."""
    for path, err in ((run_dir / "aggregate.json", "std"), (run_dir / "eval" / "results.json", "stderr")):
        data = _read_json(path)
        if data and data.get("results") is not None:
            return [EvalCell(r["policy"], r["benchmark"], metric_of(r), float(r["mean"]),
                             float(r.get(err, r.get("stderr", 0.0)) or 0.0), r.get("n_problems"))
                    for r in data["results"]]
    return []


def _seconds(status: dict, measured: float | None) -> float | None:
    """The stage's wall time over all its sessions (status.json), else what this `lco run` measured,
    else the span of its last session's timestamps (runs made before `seconds` was recorded)."""
    if isinstance(status.get("seconds"), (int, float)):
        return float(status["seconds"])
    if measured is not None:
        return measured
    try:
        start = _dt.datetime.fromisoformat(status["started"])
        end = _dt.datetime.fromisoformat(status["finished"])
    except (KeyError, TypeError, ValueError):
        return None
    return max((end - start).total_seconds(), 0.0)


def _state(status: dict | None) -> str:
    if not status:
        return "not run"
    state = status.get("state", "not run")
    if state == "failed" and status.get("interrupted"):
        return "interrupted"
    return state


def _sft_result(run_dir: Path) -> tuple[str, float | None]:
    ev = _read_json(run_dir / "sft" / "eval.json") or {}
    if ev.get("heldout_acc") is not None:
        return f"held-out greedy accuracy {pct(ev['heldout_acc'])} ({ev.get('n_problems', '?')} problems)", ev["heldout_acc"]
    loss = curve(stage_rows(run_dir, "sft"), "loss")
    return (f"final loss {loss.last[1]:.4g} (no held-out accuracy: sft.eval_problems is 0 or the data is not the task's)"
            if loss else "no metrics"), None


def _rm_result(run_dir: Path) -> tuple[str, float | None]:
    ev = _read_json(run_dir / "rm" / "eval.json") or {}
    if ev.get("pair_accuracy") is not None:
        return (f"held-out pair accuracy {pct(ev['pair_accuracy'])} ({ev.get('n_pairs', '?')} pairs), "
                f"reward margin {ev.get('reward_margin', float('nan')):.3g}"), ev["pair_accuracy"]
    acc = curve(stage_rows(run_dir, "rm"), "accuracy")
    return (f"no held-out pairs; final train pair accuracy {pct(acc.last[1])}" if acc else "no metrics"), None


def _train_result(run_dir: Path) -> tuple[str, float | None]:
    rows = stage_rows(run_dir, "train")
    held = curve(rows, "heldout_acc")
    reward = curve(rows, "reward_mean")
    parts = []
    value = None
    if held:
        value = held.last[1]
        text = f"held-out accuracy {pct(held.first[1])} (step {held.first[0]})"
        if len(held.points) > 1:
            text += f" → {pct(held.last[1])} (step {held.last[0]})"
        if held.best and held.best[1] > held.last[1]:
            text += f", best {pct(held.best[1])} at step {held.best[0]}"
        parts.append(text)
    if reward:
        parts.append(f"reward {reward.last[1]:.3g}")
    return ("; ".join(parts) or "no metrics"), value


def eval_result_text(cells: list[EvalCell]) -> str:
    groups: dict[tuple[str, str], list[EvalCell]] = {}
    for c in cells:
        groups.setdefault((c.benchmark, c.metric), []).append(c)
    parts = []
    for (bench, metric), cs in groups.items():
        unit = " (%)" if metric in PERCENT_METRICS else ""
        parts.append(f"{bench} {metric}{unit}: " + ", ".join(f"{c.policy} {c.text()}" for c in cs))
    return "; ".join(parts) or "no results"


def summarize_run(run_dir: Path, actions: dict[str, str] | None = None,
                  seconds: dict[str, float] | None = None) -> list[StageSummary]:
    """One row per pipeline stage. `actions` / `seconds`: what this `lco run` did and how long each
    stage it ran took (otherwise the time recorded in the stage's status.json)."""
    actions, seconds = actions or {}, seconds or {}
    out = []
    for stage in STAGES:
        folder = run_dir / stage
        status = _read_json(folder / STATUS_FILE)
        state = _state(status)
        value = None
        if state != "done":
            result = {"not run": "not run", "running": "running (or killed without a trace)"}.get(state, "")
            if state in ("failed", "interrupted"):
                step = (status or {}).get("step", 0)
                result = (f"interrupted; checkpoint at step {step}" if state == "interrupted" and step
                          else "interrupted before its first checkpoint" if state == "interrupted"
                          else f"failed: {(status or {}).get('error', '?')}")
        elif stage == "eval":
            result = eval_result_text(eval_cells(run_dir))
        else:
            result, value = {"sft": _sft_result, "rm": _rm_result, "train": _train_result}[stage](run_dir)
        secs = _seconds(status, seconds.get(stage)) if status else None
        out.append(StageSummary(stage, state, result, secs, folder, value, actions.get(stage)))
    return out


# --------------------------------------------------------------------------- what to run next


def _command(preset_arg: str | None, run_dir: Path, overrides: list[str], *extra: str, drop: tuple[str, ...] = ()) -> str:
    kept = [o for o in overrides if o.split("=", 1)[0] not in drop]
    return shlex.join(["lco", "run", *([preset_arg] if preset_arg else []), "--run-dir", str(run_dir), *kept, *extra])


def rl_verdict(cells: list[EvalCell]) -> list[tuple[EvalCell, EvalCell, float]]:
    """(sft, train, z) per benchmark × metric evaluated for both: z = (train − sft) / combined error."""
    by_key = {(c.policy, c.benchmark, c.metric): c for c in cells}
    out = []
    for (pol, bench, metric), tr in by_key.items():
        sft = by_key.get(("sft", bench, metric))
        if pol != "train" or sft is None:
            continue
        err = math.hypot(sft.err, tr.err)
        diff = tr.mean - sft.mean
        z = diff / err if err > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        out.append((sft, tr, z))
    return out


def next_steps(rows: list[StageSummary], run_dir: Path, preset_arg: str | None, overrides: list[str],
               train_lr: float | None = None) -> list[NextStep]:
    """What to run after this: the stages not done yet, a retrain when RL made the policy worse than
    SFT (by more than 2 combined standard errors), the report, a comparison."""
    steps = []
    missing = [r.stage for r in rows if r.state != "done"]
    if missing:
        steps.append(NextStep(_command(preset_arg, run_dir, overrides),
                              f"runs what is not done yet ({', '.join(missing)})"))
    done = {r.stage for r in rows if r.state == "done"}
    worse = [(sft, tr, z) for sft, tr, z in (rl_verdict(eval_cells(run_dir)) if "eval" in done else []) if z <= -2]
    if worse and train_lr:
        where = "; ".join(f"{sft.benchmark} ({sft.metric} {fmt_value(sft.metric, tr.mean)} vs {fmt_value(sft.metric, sft.mean)}"
                          f"{' %' if sft.percent else ''}, {abs(z):.1f} standard errors)" for sft, tr, z in worse)
        steps.append(NextStep(
            _command(preset_arg, run_dir, overrides, "--force", "train", f"train.lr={train_lr / 3:.3g}", drop=("train.lr",)),
            f"RL made the policy worse than SFT on {where}: retrain with a smaller learning rate (docs/stability.md)"))
    if done:
        steps.append(NextStep(shlex.join(["lco", "report", str(run_dir)]), "tables, plots and report.md in "
                              f"{run_dir / 'report'}"))
    if "eval" in done:
        steps.append(NextStep(shlex.join(["lco", "compare", str(run_dir), "OTHER_RUN_DIR"]),
                              "compare with another run, policy × benchmark"))
    return steps


def print_summary(rows: list[StageSummary], steps: list[NextStep], title: str) -> None:
    """The stage table and the next commands, on stdout (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col, kw in (("stage", {}), ("status", {}), ("key result", {"overflow": "fold"}), ("time", {"justify": "right"}),
                    ("folder", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for r in rows:
        status = r.state if r.action in (None, "run") or r.state != "done" else {
            "skip": "done (skipped)", "resume": "done (resumed)", "restart": "done (restarted)"}.get(r.action, r.state)
        table.add_row(r.stage, status, r.result, fmt_seconds(r.seconds), str(r.folder))
    console = Console(width=140)
    if rows:
        console.print(table)
    if steps:
        console.print("next:", highlight=False)
        for s in steps:
            console.print(f"  {s.command}", highlight=False, markup=False, soft_wrap=True)
            console.print(f"      {s.why}", highlight=False, markup=False, soft_wrap=True)
