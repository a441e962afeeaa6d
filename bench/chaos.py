"""Chaos test of `lco run`: kill it (kill -9 or SIGTERM) at random points in every stage, rerun
until it completes, and check that nothing was lost or duplicated.

One uninterrupted `lco run` on a small preset is the reference. Then, round-robin over the four
stages, a run is started, killed at a random moment once the target stage's status says
"running" (0–`--jitter` seconds later), and restarted, until every stage has taken its share of
the `--kills`. Each run that completes is compared with the reference:

* completed runs — `lco run` exited 0 (after kills, or because an attempt's kill did not land in time);
* identical results — every `final/` model.safetensors byte-identical to the reference's and
  `eval/results.json` equal;
* leftover temp files — `.tmp` / `.old` / `.swap` names or a `.<stage>.staging` folder left in the
  run directory after it completed;
* duplicated rows — a `step` logged twice in a `metrics.jsonl`, or an (id, sample) twice in an
  eval samples file.

    python bench/chaos.py                      # 20 kills (default), prints a markdown summary
    python bench/chaos.py --kills 40 --seed 3 --json chaos.json

Training steps sleep `--step-delay` seconds (LCO_STEP_DELAY) so that kills land inside the loops,
not only in process start-up; the sleep changes no result.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STAGES = ("sft", "rm", "train", "eval")
PRESET = {
    "name": "chaos",
    "seed": 0,
    "model": {"policy": "tiny:hidden=32,layers=2,heads=2,kv_heads=2,intermediate=64"},
    "task": {"op": "add", "digits": 2, "n_test": 40},
    "sft": {"lr": 3e-3, "batch_size": 16, "micro_batch_size": 8, "max_steps": 9, "checkpoint_every": 3, "log_every": 1,
            "eval_problems": 16},
    "rm": {"lr": 1e-3, "batch_size": 8, "micro_batch_size": 8, "max_steps": 6, "checkpoint_every": 2, "log_every": 1,
           "pairs": {"source": "file", "path": "pairs.jsonl", "eval_fraction": 0.25}},
    "train": {"lr": 1e-3, "steps": 6, "batch_size": 4, "samples_per_prompt": 2, "micro_batch_size": 8, "eval_every": 3,
              "eval_problems": 8, "checkpoint_every": 2, "loss_chunk_size": 16, "rollout": {"max_new_tokens": 6}},
    "eval": {"samples": 2, "limit": 24, "max_new_tokens": 6, "policies": ["sft", "rm", "train"]},
}


def write_inputs(root: Path) -> None:
    (root / "chaos.yaml").write_text(yaml.safe_dump(PRESET))
    rng = random.Random(0)
    rows = []
    for _ in range(40):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + rng.choice([-10, -1, 1, 10]))})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def start(root: Path, run_dir: str, step_delay: float) -> subprocess.Popen:
    env = {**os.environ, "LCO_STEP_DELAY": str(step_delay), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lco_cli", "run", "chaos.yaml", "--run-dir", run_dir, "--json"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_stage(run: Path, pid: int) -> str | None:
    """The stage process `pid` is writing now: the one whose lock file it holds (/proc/locks).
    A status.json saying "running" is not enough — a kill -9 leaves that behind."""
    inodes = {}
    for stage in STAGES:
        try:
            inodes[os.stat(run / stage / ".lock").st_ino] = stage
        except OSError:
            continue
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[4] == str(pid):
            stage = inodes.get(int(fields[5].rsplit(":", 1)[1]))
            if stage:
                return stage
    return None


def stage_done(run: Path, stage: str) -> bool:
    try:
        return json.loads((run / stage / "status.json").read_text()).get("state") == "done"
    except (OSError, ValueError):
        return False


def fingerprint(run: Path) -> dict:
    out = {s: hashlib.sha256((run / s / "final/model.safetensors").read_bytes()).hexdigest()
           for s in ("sft", "rm", "train")}
    out["results"] = json.loads((run / "eval/results.json").read_text())
    return out


def leftovers(run: Path) -> list[str]:
    return [str(p.relative_to(run)) for p in run.rglob("*")
            if p.name.endswith((".tmp", ".old", ".swap")) or p.name.endswith(".staging")]


def duplicated_rows(run: Path) -> int:
    dups = 0
    for metrics in run.glob("*/metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
        dups += len(steps) - len(set(steps))
    for samples in (run / "eval/samples").rglob("*.jsonl"):
        keys = [(r["id"], r["sample"]) for r in map(json.loads, samples.read_text().splitlines()) if r]
        dups += len(keys) - len(set(keys))
    return dups


def chaos(root: Path, kills_wanted: int, seed: int, jitter: float, step_delay: float, max_minutes: float) -> dict:
    rng = random.Random(seed)
    t_start = time.time()
    ref = start(root, "ref", step_delay)
    _, err = ref.communicate()
    if ref.returncode != 0:
        raise SystemExit(f"reference run failed:\n{err[-3000:]}")
    reference = fingerprint(root / "ref")
    per_stage = {s: 0 for s in STAGES}
    kills = {"SIGKILL": 0, "SIGTERM": 0}
    completed, identical, left, dups, attempt, exits = 0, 0, [], 0, 0, {}
    run_id, kills_this_run = 0, 0
    quota = -(-kills_wanted // len(STAGES))
    while (sum(per_stage.values()) < kills_wanted or kills_this_run) and time.time() - t_start < max_minutes * 60:
        name = f"chaos-{run_id}"
        pending = [s for s in STAGES if per_stage[s] < quota and not stage_done(root / name, s)]
        target = pending[attempt % len(pending)] if pending else None
        attempt += 1
        proc = start(root, name, step_delay)
        killed = None
        if target is not None:
            while proc.poll() is None and running_stage(root / name, proc.pid) != target:
                time.sleep(0.05)
            if proc.poll() is None:
                time.sleep(rng.uniform(0, jitter))
                stage_now = running_stage(root / name, proc.pid)
                if proc.poll() is None and stage_now is not None:
                    sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
                    proc.send_signal(sig)
                    killed = (sig.name, stage_now)
        _, err = proc.communicate()
        exits[proc.returncode] = exits.get(proc.returncode, 0) + 1
        if killed is not None and proc.returncode != 0:
            kills[killed[0]] += 1
            per_stage[killed[1]] += 1
            kills_this_run += 1
            continue
        if proc.returncode != 0:
            raise SystemExit(f"run {name} failed without being killed (exit {proc.returncode}):\n{err[-3000:]}")
        completed += 1
        identical += int(fingerprint(root / name) == reference)
        left += leftovers(root / name)
        dups += duplicated_rows(root / name)
        shutil.rmtree(root / name)
        run_id, kills_this_run = run_id + 1, 0
    return {"kills": sum(kills.values()), "by_signal": kills, "by_stage": per_stage, "completed_runs": completed,
            "identical_to_reference": identical, "leftover_temp_files": left, "duplicated_rows": dups,
            "exit_codes": {str(k): v for k, v in sorted(exits.items())}, "wall_s": round(time.time() - t_start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="kills in all (spread evenly over the four stages)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=1.5, help="seconds of random wait once the target stage runs")
    ap.add_argument("--step-delay", type=float, default=0.2, help="LCO_STEP_DELAY for the training loops")
    ap.add_argument("--max-minutes", type=float, default=45)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    args = ap.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="lco-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    write_inputs(root)
    summary = chaos(root, args.kills, args.seed, args.jitter, args.step_delay, args.max_minutes)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print("| kills (SIGKILL / SIGTERM) | per stage (sft / rm / train / eval) | completed runs | identical to the "
          "uninterrupted run | leftover temp files | duplicated rows | wall |")
    print("|---|---|---:|---:|---:|---:|---:|")
    s = summary
    print(f"| {s['kills']} ({s['by_signal']['SIGKILL']} / {s['by_signal']['SIGTERM']}) | "
          f"{' / '.join(str(s['by_stage'][st]) for st in STAGES)} | {s['completed_runs']} | "
          f"{s['identical_to_reference']} of {s['completed_runs']} | {len(s['leftover_temp_files'])} | "
          f"{s['duplicated_rows']} | {s['wall_s']:.0f} s |")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
