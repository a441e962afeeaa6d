#!/usr/bin/env python
"""The stability map: where does each method stop being stable? Every method of the comparison study from its
picked lr (docs/compare.md) up to 100x it in half-decades, several seeds, runs long enough to plateau, with
split-gradient and gradient-gap telemetry and the collapse guard off (docs/stability.md).

    python bench/stability_map.py --jobs 2                     # the `tiny` map, the subset that fits ~60 min (resumable)
    python bench/stability_map.py --jobs 2 --part tiny-math    # the real-path subset (BPE, chat template, math-verify)
    python bench/stability_map.py --jobs 2 --steps 120 --seeds 0,1,2,3   # the full `tiny` map (hours, see TINY_WHY)

Parts (finished runs are skipped, so an interrupted map resumes; each part keeps OUT/<part>/summary.json and
the doc shows every part found there):

* `tiny`: one SFT + DPO RM from `tiny` (bench/compare_algos.py's `prepare_base`), a pilot (GRPO and LCO-KLD at
  their picked lr, seed 0, `--pilot-steps` steps, held-out accuracy every 10) that measures where the curves
  flatten, then the map: the Table 1 methods with the DPO RM's reward (LCO: dense advantages) and the verifier
  setting (GRPO vs LCO-KLD-sparse with the ±1 verifier), every lr multiple of `--mults` × seed.
* `tiny-math`: GRPO vs LCO-KLD-sparse with the math-verify reward on `tiny-math`, a subset sized to its ~15 s steps.

Every run samples `--rollouts` responses per step (batch_size = rollouts / the method's samples per prompt, as the
study), logs held-out greedy accuracy every `--eval-every` steps, the split gradient norm every step and the
gradient-gap telemetry every `--gap-every` steps.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_algos as ca  # noqa: E402
import stability_report as rep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: each (setting, method)'s lr picked on the validation split: docs/compare.md, "Learning rates picked on the
#: validation split" (`python bench/compare_algos.py --jobs 2`, 30 steps, seed 0, 200 validation prompts)
PICKED: dict[str, float] = {
    "LCO-KLD": 3e-6, "LCO-MSE": 3e-6, "LCO-LCH": 3e-6, "REINFORCE": 3e-5, "PPO": 3e-6,
    "GRPO": 1e-5, "DAPO": 1e-5, "GSPO": 1e-5,
    "GRPO@verifier": 3e-5, "LCO-KLD-sparse@verifier": 1e-5,
}

#: ×1, ×√10, ×10, ×10√10, ×100
HALF_DECADES = tuple(10 ** (k / 2) for k in range(5))

VERIFIER = ca.Table("Verifier setting: the ±1 verifier reward (LCO: sparse advantages), as Table 5's lower half",
                    ["GRPO", "LCO-KLD-sparse"], ["train.reward=verifier"], tag="verifier", target="GRPO")
DENSE = ca.Table("DPO-RM reward (LCO: dense `dpo` advantages), as Table 1", ca.TABLES["table1"].methods)
PILOT = ("GRPO", "LCO-KLD")


@dataclass
class Part:
    """One map: its base (SFT + RM), the train/eval settings every run shares, its settings and sizes."""

    name: str
    title: str
    base_preset: str
    study_preset: str | None
    settings: dict[str, ca.Table]
    steps: int
    seeds: list[int]
    mults: list[float]
    top_seeds: list[int]  # the seeds of the largest multiple (the budget's subset)
    eval_every: int
    why: str = ""  # why these sizes (the doc says it)
    pilot_steps: int = 0
    extra: list[str] = field(default_factory=list)


def half_decades(spec: str) -> list[float]:
    """'1,3.16,10' -> exact powers 10^(k/2) where a value is within 1% of one, else the value."""
    out = []
    for x in (float(v) for v in spec.split(",") if v.strip()):
        k = round(2 * math.log10(x))
        out.append(10 ** (k / 2) if abs(10 ** (k / 2) / x - 1) < 0.01 else x)
    return sorted(out)


def ints(spec: str) -> list[int]:
    return [int(s) for s in spec.split(",") if s.strip()]


def telemetry(gap_every: int, eval_every: int, steps: int) -> list[str]:
    """The keys every run of the map adds: split-gradient and gradient-gap telemetry, the collapse guard off (a
    collapsing run must run to the end: its final accuracy is the point), evaluation, no checkpoints."""
    return ["train.telemetry.split_grad_norm=true", f"train.telemetry.gradient_gap={gap_every}", "train.guard.enabled=false",
            f"train.eval_every={eval_every}", f"train.checkpoint_every={10 * steps}", f"train.steps={steps}"]


def run_name(key: str, mult: float, lr: float, steps: int, seed: int) -> str:
    return f"{key}-x{mult:.3g}-lr{lr:.3g}-n{steps}-s{seed}"


def run_part(part: Part, out: Path, methods: set[str], args, t0: float) -> dict:
    pdir = out / part.name
    pdir.mkdir(parents=True, exist_ok=True)
    overrides = ca.study_overrides(part.study_preset) + part.extra + list(args.set)
    base = ca.prepare_base(pdir, part.base_preset, overrides, t0)
    keys: dict[str, list[str]] = {}
    for table in part.settings.values():
        for m in table.methods:
            k = ca.key_of(table, m)
            if not methods or k in methods:
                keys[k] = overrides + ca.per_method_overrides(part.base_preset, overrides, m, args.rollouts) + table.setting
    tele = telemetry(args.gap_every, part.eval_every, part.steps)
    jobs: dict[tuple[str, float, int], ca.Job] = {}
    for k, ko in keys.items():
        for x in part.mults:
            for s in (part.top_seeds if x == part.mults[-1] else part.seeds):
                lr = PICKED[k] * x
                jobs[k, x, s] = ca.Job(pdir / "map" / run_name(k, x, lr, part.steps, s), ko + tele + [f"train.lr={lr}", f"seed={s}"],
                                       evaluate=False)
    pilot = {}
    if part.pilot_steps:
        ptele = telemetry(args.gap_every, 10, part.pilot_steps)
        pilot = {k: ca.Job(pdir / "pilot" / run_name(k, 1, PICKED[k], part.pilot_steps, 0),
                           overrides + ca.per_method_overrides(part.base_preset, overrides, k, args.rollouts) + ptele
                           + [f"train.lr={PICKED[k]}", "seed=0"], evaluate=False) for k in PILOT}
    ca.run_all(base, part.base_preset, [*pilot.values(), *jobs.values()], args.jobs, t0)

    settings = {}
    for name, table in part.settings.items():
        ks = [ca.key_of(table, m) for m in table.methods if ca.key_of(table, m) in keys]
        runs = {k: {x: {s: rep.read_run(jobs[k, x, s].run) for (kk, xx, s) in jobs if kk == k and xx == x} for x in part.mults} for k in ks}
        starts = [rep.start_acc(r["curve"]) for by_x in runs.values() for by_s in by_x.values() for r in by_s.values()]
        start = starts[0] if starts else float("nan")
        if any(abs(s - start) > 1e-9 for s in starts):
            raise SystemExit(f"{part.name}/{name}: the runs' step-0 accuracies differ ({sorted(set(starts))}): not one SFT start")
        settings[name] = rep.summarise_setting(runs, {k: {x: PICKED[k] * x for x in part.mults} for k in ks}, start)
    pilot_out = {}
    if pilot:
        pr = {k: rep.read_run(j.run) for k, j in pilot.items()}
        acc = sum(r["final_greedy"] for r in pr.values()) / len(pr)
        from lco_cli.config import load

        n = load(part.base_preset, overrides)[1].train.eval_problems
        tol = rep.binomial_sd(acc, n)
        plateaus = {k: rep.plateau_step(r["curve"], tol) for k, r in pr.items()}
        need = None if any(p is None for p in plateaus.values()) else max(plateaus.values())
        verdict = (f"Flat from step {need} (the later of the two). " if need is not None else
                   "At least one pilot curve is not flat within the pilot. ")
        verdict += (f"The map runs **{part.steps} steps**: " + ("stable runs have reached their plateau. " if need is not None and part.steps >= need
                                                                 else "shorter than the plateau, for the time budget (see Setup)."))
        pilot_out = {"steps": part.pilot_steps, "eval_every": 10, "eval_problems": n, "tol": tol, "verdict": verdict,
                     "runs": {k: {"lr": PICKED[k], "curve": r["curve"], "plateau": plateaus[k], "wall_s": r["wall_s"],
                                  "s_per_step": r["wall_s"] / part.pilot_steps} for k, r in pr.items()}}
    walls = [r.get("wall_mean_s") for st in settings.values() for m in st["methods"].values() for r in m["lrs"].values()]
    summary = {
        "part": part.name, "title": part.title, "command": "python bench/stability_map.py " + " ".join(args.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": os.environ.get("OMP_NUM_THREADS"), "jobs": args.jobs,
        "elapsed_min": (time.time() - t0) / 60, "n_runs": len(jobs) + len(pilot),
        "wall_min": sum(json.loads((j.run / "wall.json").read_text())["seconds"] for j in [*jobs.values(), *pilot.values()]
                        if (j.run / "wall.json").exists()) / 60,
        "steps": part.steps, "seeds": part.seeds, "top_seeds": part.top_seeds, "mults": part.mults, "rollouts": args.rollouts,
        "gap_every": args.gap_every, "eval_every": part.eval_every, "picked": {k: PICKED[k] for k in keys},
        "setup": (f"one SFT + one DPO RM from `{part.base_preset}`; every run {part.steps} steps × {args.rollouts} rollouts (GRPO/DAPO/GSPO: "
                  "4 samples per prompt, the others 1), each algorithm's own epochs × minibatches (as docs/compare.md), lr = the method's "
                  f"picked lr × {', '.join(f'{x:.3g}' for x in part.mults)}; seeds {part.seeds}"
                  + (f" ({part.top_seeds} at {part.mults[-1]:.3g}×)" if part.top_seeds != part.seeds else "")
                  + f"; held-out greedy accuracy every {part.eval_every} steps, split gradient norm every step, gradient-gap telemetry "
                  f"every {args.gap_every} steps" + ("" if args.gap_every else " (off)") + ", collapse guard off. "
                  f"{len(jobs)} runs, mean {sum(w for w in walls if w) / max(1, len([w for w in walls if w])):.0f} s each. " + part.why),
        "titles": {n: t.title for n, t in part.settings.items()}, "settings": settings, "pilot": pilot_out,
    }
    (pdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_outputs(out: Path, doc: Path, img: Path) -> None:
    """The plot per part and the generated block of `doc`, from every part's summary.json under `out`."""
    parts = {}
    for name in ("tiny", "tiny-math"):
        f = out / name / "summary.json"
        if f.exists():
            parts[name] = json.loads(f.read_text())
    for name, s in parts.items():
        png = "stability_map.png" if name == "tiny" else f"stability_map_{name.replace('-', '_')}.png"
        rep.plot(s["settings"], {"dense": "DPO-RM reward (LCO: dense)", "verifier": "±1 verifier reward (LCO: sparse)"}, img / png)
        s["images"] = {list(s["settings"])[-1]: png}  # one figure per part, after its last setting's table
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text("# Where each method stops being stable: the stability map\n")
    rep.cr.write_doc(doc, rep.markdown({"parts": parts}, os.path.relpath(img, doc.parent)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/stability", help="map folder (resumable)")
    ap.add_argument("--doc", default=str(REPO / "docs/stability.md"))
    ap.add_argument("--img", default=str(REPO / "docs/img"))
    ap.add_argument("--part", default="tiny", choices=("tiny", "tiny-math", "all"))
    ap.add_argument("--jobs", type=int, default=1, help="training runs at once (each in its own process, one thread)")
    ap.add_argument("--methods", default="", help="keep only these (setting, method) keys, e.g. LCO-KLD,GRPO,GRPO@verifier")
    ap.add_argument("--seeds", default="0,1", help="seeds of the tiny map (the full map: 0,1,2,3)")
    ap.add_argument("--top-seeds", default=None, help="seeds at the largest lr multiple (default: --seeds)")
    ap.add_argument("--steps", type=int, default=40, help="train.steps of the tiny map (40: the budget subset; the full map: 120)")
    ap.add_argument("--mults", default="1,3.16,10,31.6,100", help="lr multiples of the picked lr (half-decades snap to 10^(k/2))")
    ap.add_argument("--eval-every", type=int, default=5, help="held-out greedy accuracy every N steps (tiny)")
    ap.add_argument("--pilot-steps", type=int, default=120, help="length of the tiny pilot runs (0: no pilot)")
    ap.add_argument("--math-seeds", default="0,1")
    ap.add_argument("--math-steps", type=int, default=20)
    ap.add_argument("--math-mults", default="1,10,100")
    ap.add_argument("--math-eval-every", type=int, default=5)
    ap.add_argument("--gap-every", type=int, default=5, help="train.telemetry.gradient_gap (0: off)")
    ap.add_argument("--rollouts", type=int, default=64, help="rollout samples per step, every method")
    ap.add_argument("--base-preset", default="tiny", help="preset of the tiny part's shared SFT and RM")
    ap.add_argument("--preset", default="tiny-compare", help="preset whose train/eval sections every tiny run uses")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])

    t0 = time.time()
    out = Path(args.out).resolve()
    methods = {m.strip() for m in args.methods.split(",") if m.strip()}
    unknown = methods - set(PICKED)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; known: {list(PICKED)}")
    seeds = ints(args.seeds)
    parts = []
    if args.part in ("tiny", "all"):
        parts.append(Part("tiny", "`tiny`: 2-digit addition, ~1M-parameter Qwen2", args.base_preset, args.preset,
                          {"dense": DENSE, "verifier": VERIFIER}, args.steps, seeds, half_decades(args.mults),
                          ints(args.top_seeds) if args.top_seeds is not None else seeds, args.eval_every,
                          why=TINY_WHY, pilot_steps=args.pilot_steps))
    if args.part in ("tiny-math", "all"):
        ms = ints(args.math_seeds)
        parts.append(Part("tiny-math", "`tiny-math`: the real path (BPE tokenizer, chat template, math-verify)", "tiny-math", None,
                          {"verifier": VERIFIER}, args.math_steps, ms, half_decades(args.math_mults), ms, args.math_eval_every,
                          why=MATH_WHY))
    for part in parts:
        ca.log(f"part {part.name}", t0)
        run_part(part, out, methods, args, t0)
    write_outputs(out, Path(args.doc), Path(args.img))
    ca.log(f"done in {(time.time() - t0) / 60:.1f} min: {out}, {args.doc}", t0)


#: why the tiny map's default sizes (measured on this repository's 2-core CPU; the doc quotes it)
TINY_WHY = (
    "Sizes: per-step run time measured at 20 steps with this telemetry, 2 runs at a time on a 2-core CPU shared with other "
    "jobs (load average ~6): PPO 4.4 s, LCO-KLD 1.9 s, LCO-KLD-sparse (verifier) 1.1 s, GRPO 0.9 s, so one step of all ten "
    "(setting, method) pairs at one lr and seed costs ~16 s of run time. The full map (5 lrs × 4 seeds × 120 steps, the pilot's "
    "length) is then ~5 h with 2 at a time; within ~60 min fit 40 steps × seeds 0, 1 at every lr (~55 min, plus ~2 min of pilot "
    "and ~2 min of SFT + RM). Steps and seeds are cut, not lrs: the lr axis is the map, and 2 seeds still give a mean and a "
    "spread. `--steps 120 --seeds 0,1,2,3` runs the full map.")
MATH_WHY = (
    "Sizes: a tiny-math step costs ~4-6 s (measured: 2 steps, 64 rollouts, 2 runs at a time, shared 2-core CPU) plus ~8 s per "
    "held-out evaluation of 100 problems, so 3 lrs (×1, ×10, ×100: the same 100× range in whole decades) × 2 seeds × 20 steps, "
    "evaluated every 5, take ~20 min with 2 at a time, SFT + RM included. No lr was picked on tiny-math: ×1 is the `tiny` pick of "
    "the same (setting, method) (an assumption). The verifier setting only: tiny-math's self-built RM sees few correct samples "
    "(docs/benchmarks.md §8), so dense advantages and rewards from it are noise.")

if __name__ == "__main__":
    main()
