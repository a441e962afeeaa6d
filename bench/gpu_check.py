"""GPU acceptance check: one command, one GPU, no downloads, under 8 minutes on an H200.

Steps (each in its own subprocess with a timeout; a failing step never stops the later ones):

  env          torch / transformers / accelerate / peft versions, CUDA, GPU name, bf16 support
  cuda_tests   python -m pytest tests/test_cuda.py (chunked loss engine on the GPU vs a float64 reference)
  sft, rm, train, eval
               the real CLI (`python -m lco_cli STAGE preset.yaml`) on a temporary preset: random-init
               `random:qwen2.5-0.5b` policy (Qwen2.5-0.5B's shapes: the real 151,936-token vocabulary),
               arith task with 1-digit sums, bf16 mixed precision (fp32 master weights),
               gradient checkpointing, 2-4 steps each, short generations
  train_fsdp   accelerate launch --config_file <bundled fsdp.yaml> --num_processes 1 -m lco_cli train ...
               (through a small launcher that records whether FSDP really wrapped the model)
  gpu_step     bench/gpu_step.py capped to a subset of methods and a shorter sequence
  train_lora   lco train with model.lora.enabled=true
  train_split_grad
               lco train with train.telemetry.split_grad_norm=true and train.telemetry.gradient_gap=1

Writes DIR/summary.md and DIR/summary.json (--out, default gpu_check_out), per step: status
(ok / failed / skipped), seconds, key numbers, the tail of stderr on failure; stage logs in DIR/logs/.
Exit code 0 if every step is ok, 1 otherwise. A total time budget (--budget-s) skips the steps that
no longer fit rather than overrun the machine.

`--cpu-dry-run`: the same steps on the CPU at tiny sizes (built-in `tiny` model, float32, CUDA
tests reported skipped, gpu_step --tiny), well under 2 minutes on 2 cores (tests/test_gpu_check.py).

Run from the repository root without installing lco: `lco_cli.presets` is the repo's `presets/`
folder only in an installed package, so when it is not importable this script links
lco_cli/presets -> ../presets for the run (and removes the link afterwards).

Recommended command on a GPU machine without network (repository root, lco not installed; a
machine image that lacks lco's dependencies `datasets`, `dill` and `multiprocess` gets them as wheels
downloaded elsewhere into .whl/ with `pip download --no-deps --python-version 3.12 ...`):

  (ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl); export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false; nvidia-smi; python3 bench/gpu_check.py --out gpu_check_out --budget-s 420

(~320 s on one H200, docs/benchmarks.md §6; allow ~100 s more for the slowest step's overrun.)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

GPU_POLICY = "random:qwen2.5-0.5b"


# --------------------------------------------------------------------------- presets


def preset(cpu: bool) -> dict:
    """The temporary preset: short everything. The arith task with 1-digit sums keeps answers to 1-2
    characters, so even a barely trained policy sometimes answers right and the RM gets pairs."""
    mp = "no" if cpu else "bf16"
    lr = 2e-3 if cpu else 1e-4
    return {
        "name": "gpu-check",
        "description": "bench/gpu_check.py: short end-to-end stages (benchmark only, nothing learned means anything)",
        "seed": 0,
        "model": {"policy": "tiny" if cpu else GPU_POLICY, "gradient_checkpointing": True},
        "task": {"name": "arith", "op": "add", "digits": 1, "n_test": 20, "slip_rate": 0.0},
        "sft": {"lr": lr, "batch_size": 32, "micro_batch_size": 16 if cpu else 32, "epochs": 10, "max_steps": 4, "max_length": 64,
                "mixed_precision": mp, "checkpoint_every": 100, "log_every": 1, "eval_problems": 8 if cpu else 16},
        "rm": {"lr": lr / 10, "batch_size": 8, "micro_batch_size": 8, "epochs": 1, "max_steps": 3, "max_length": 64,
               "mixed_precision": mp, "checkpoint_every": 100, "log_every": 1,
               # a pairs file (written next to the preset): a random-init policy never answers right, so
               # self-generated, verifier-labelled pairs would be empty (seen on the first H200 run)
               "pairs": {"source": "file", "path": None, "eval_fraction": 0.1}},
        "train": {"algo": "lco", "objective": "kld", "advantage": "dpo", "steps": 2, "batch_size": 4 if cpu else 8, "samples_per_prompt": 2,
                  "micro_batch_size": 8, "update_epochs": 1, "minibatches": 1, "lr": lr / 10, "mixed_precision": mp,
                  "eval_every": 0, "eval_problems": 0, "checkpoint_every": 100, "log_every": 1,
                  "rollout": {"max_new_tokens": 16 if cpu else 48, "temperature": 1.0, "top_p": 1.0}},
        "eval": {"policies": ["train"], "benchmarks": ["arith"], "samples": 1, "limit": 8 if cpu else 16, "max_new_tokens": 32},
    }


# --------------------------------------------------------------------------- running steps


class MemPoller:
    """Peak `nvidia-smi` memory.used (MiB, GPU 0) while a step runs; None without nvidia-smi."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = None

    def _read(self) -> int | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5).stdout
            return int(out.strip().splitlines()[0])
        except Exception:  # noqa: BLE001 - telemetry only
            return None

    def __enter__(self):
        if self.enabled:
            def loop():
                while not self._stop.wait(0.5):
                    v = self._read()
                    if v is not None:
                        self.peak = max(self.peak or 0, v)
            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=6)


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_cmd(name: str, cmd: list[str], timeout: float, logs: Path, env: dict, cwd: Path, gpu: bool) -> dict:
    """Run `cmd` in its own process group with a timeout (the whole group is killed on timeout)."""
    out_f, err_f = logs / f"{name}.out", logs / f"{name}.err"
    t0 = time.perf_counter()
    with open(out_f, "w") as fo, open(err_f, "w") as fe, MemPoller(gpu) as mem:
        fe.write("$ " + " ".join(cmd) + "\n")
        fe.flush()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            with _suppress():
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = proc.returncode
    return {"rc": rc, "timed_out": timed_out, "seconds": round(time.perf_counter() - t0, 1),
            "gpu_mem_peak_mib": mem.peak, "stdout": out_f, "stderr": err_f}


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError, OSError))


def last_metrics(stage_dir: Path) -> dict:
    """The last row of a stage's metrics.jsonl, numbers only (a few keys)."""
    f = stage_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []
    if not rows:
        return {}
    keep = ("step", "loss", "grad_norm", "grad_norm_head", "grad_norm_body", "tokens_per_s", "time", "pair_accuracy",
            "reward_mean", "kl_ref", "entropy", "heldout_acc", "gap_J", "gap_eta", "gap_norm", "gap_alignment", "gap_M")
    row = rows[-1]
    out = {k: row[k] for k in row if (k in keep or k.startswith("grad_norm")) and isinstance(row[k], (int, float))}
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in out.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FSDP_PROBE = '''"""Runs `lco` like `python -m lco_cli`, recording what accelerate.prepare made of the model."""
import json, os, sys
from accelerate import Accelerator

_prepare = Accelerator.prepare


def _recording_prepare(self, *objs):
    out = _prepare(self, *objs)
    try:
        from torch.distributed.fsdp import FSDPModule
        units = [type(m).__name__ for m in out[0].modules() if isinstance(m, FSDPModule)]
    except Exception as exc:  # noqa: BLE001
        units = [f"error: {exc}"]
    if self.is_main_process:
        with open(os.environ["LCO_GPU_CHECK_PROBE"], "w") as fh:
            json.dump({"distributed_type": str(self.distributed_type), "n_fsdp_units": len(units),
                       "fsdp_unit_types": sorted(set(units)), "num_processes": self.num_processes}, fh)
    return out


Accelerator.prepare = _recording_prepare
from lco_cli.cli import main
sys.argv = ["lco", *sys.argv[1:]]
main()
'''


# --------------------------------------------------------------------------- the check


class Check:
    def __init__(self, args):
        self.args = args
        self.cpu = args.cpu_dry_run
        self.out = Path(args.out).resolve()
        self.logs = self.out / "logs"
        self.run_dir = self.out / "run"
        self.steps: list[dict] = []
        self.t_start = time.perf_counter()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
        if self.cpu:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.train_overrides: list[str] = []  # set to a fallback when the rm stage fails

    def remaining(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t_start)

    def log(self, msg: str) -> None:
        print(f"[gpu_check {time.perf_counter() - self.t_start:6.1f}s] {msg}", flush=True)

    def step(self, name: str, timeout: float, min_needed: float, fn) -> dict:
        if self.args.only and name not in self.args.only:
            return self._record({"name": name, "status": "skipped", "seconds": 0.0, "numbers": {}, "note": "not in --only"})
        left = self.remaining()
        if left < min_needed:
            return self._record({"name": name, "status": "skipped", "seconds": 0.0, "numbers": {},
                                 "note": f"time budget: {left:.0f}s left, step needs ~{min_needed:.0f}s"})
        self.log(f"{name}: start (timeout {min(timeout, left):.0f}s)")
        t0 = time.perf_counter()
        try:
            rec = fn(min(timeout, left))
        except Exception as exc:  # noqa: BLE001 - one step never stops the others
            rec = {"status": "failed", "numbers": {}, "stderr_tail": f"{type(exc).__name__}: {exc}"}
        rec = {"name": name, "seconds": round(time.perf_counter() - t0, 1), **rec}
        return self._record(rec)

    def _record(self, rec: dict) -> dict:
        rec.setdefault("numbers", {})
        self.steps.append(rec)
        extra = f" — {rec['note']}" if rec.get("note") else ""
        self.log(f"{rec['name']}: {rec['status']} in {rec['seconds']}s {json.dumps(rec['numbers'])}{extra}")
        if rec["status"] == "failed" and rec.get("stderr_tail"):
            print("\n".join("    " + x for x in rec["stderr_tail"].splitlines()[-15:]), flush=True)
        return rec

    # ---- steps

    def env_report(self, timeout: float) -> dict:
        code = r'''
import json, importlib, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
for mod in ("torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors", "numpy"):
    try:
        info[mod] = importlib.import_module(mod).__version__
    except Exception as exc:
        info[mod] = f"missing ({type(exc).__name__})"
for mod in ("datasets", "math_verify", "dill"):
    try:
        importlib.import_module(mod); info[mod] = "present"
    except Exception:
        info[mod] = "absent"
import torch
info["cuda_available"] = torch.cuda.is_available()
info["cuda"] = torch.version.cuda
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(), gpu_mem_gib=round(p.total_memory / 2**30, 1),
                capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
else:
    info.update(gpu=None, bf16=False)
info["cpu_threads"] = torch.get_num_threads()
import lco_cli.presets, lco_cli.cli  # the package imports from the checkout
print(json.dumps(info))
'''
        res = run_cmd("env", [PY, "-c", code], timeout, self.logs, self.env, ROOT, gpu=False)
        if res["rc"] != 0:
            return {"status": "failed", "stderr_tail": tail(res["stderr"])}
        info = json.loads(res["stdout"].read_text().strip().splitlines()[-1])
        (self.out / "env.json").write_text(json.dumps(info, indent=2))
        ok = self.cpu or (info.get("cuda_available") and info.get("bf16"))
        return {"status": "ok" if ok else "failed", "numbers": info,
                **({} if ok else {"stderr_tail": "no CUDA GPU with bf16 (this is the GPU check; use --cpu-dry-run on a CPU)"})}

    def cuda_tests(self, timeout: float) -> dict:
        res = run_cmd("cuda_tests", [PY, "-m", "pytest", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider", "-rfEs"],
                      timeout, self.logs, self.env, ROOT, gpu=not self.cpu)
        text = res["stdout"].read_text(errors="replace")
        counts = {}
        import re
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", text.splitlines()[-1] if text.strip() else ""):
            counts[what.rstrip("s") if what == "errors" else what] = int(n)
        numbers = {**counts, "gpu_mem_peak_mib": res["gpu_mem_peak_mib"]}
        if res["rc"] == 0 and counts.get("passed", 0) == 0 and counts.get("skipped", 0):
            return {"status": "skipped", "numbers": numbers, "note": "no CUDA: every test skipped"}
        if res["rc"] == 0:
            return {"status": "ok", "numbers": numbers}
        fails = "\n".join(x for x in text.splitlines() if x.startswith(("FAILED", "ERROR")))
        return {"status": "failed", "numbers": numbers, "stderr_tail": (fails + "\n" + text[-2500:])[-3500:]}

    def stage(self, name: str, stage: str, overrides: list[str], timeout: float, *, fresh: bool = False,
              launcher: list[str] | None = None, probe: Path | None = None) -> dict:
        stage_dir = self.run_dir / stage
        if fresh and stage_dir.exists():
            shutil.rmtree(stage_dir)  # a variant reruns `train` from scratch (and keeps the disk to one copy)
        cli = [stage, str(self.preset_path), *overrides, "--run-dir", str(self.run_dir)]
        cmd = [*(launcher or [PY, "-m", "lco_cli"]), *cli]
        env = dict(self.env)
        if probe is not None:
            env["LCO_GPU_CHECK_PROBE"] = str(probe)
        res = run_cmd(name, cmd, timeout, self.logs, env, self.out, gpu=not self.cpu)
        final = stage_dir / "final"
        numbers = {"rc": res["rc"], "gpu_mem_peak_mib": res["gpu_mem_peak_mib"], **last_metrics(stage_dir)}
        if stage == "eval":
            numbers.update(eval_numbers(stage_dir))
        else:
            numbers["final"] = final.is_dir() and any(final.iterdir())
        if probe is not None and probe.exists():
            numbers.update(json.loads(probe.read_text()))
        ok = res["rc"] == 0 and (stage == "eval" or numbers["final"])
        rec = {"status": "ok" if ok else "failed", "numbers": numbers, "cmd": " ".join(cmd)}
        if res["timed_out"]:
            rec["note"] = f"timed out after {timeout:.0f}s"
        if not ok:
            rec["stderr_tail"] = tail(res["stderr"])
        return rec

    def gpu_step(self, timeout: float) -> dict:
        out = self.out / "gpu_step"
        flags = ["--methods", self.args.gpu_step_methods]
        flags += ["--tiny"] if self.cpu else ["--seq-len", str(self.args.gpu_step_seq_len)]
        res = run_cmd("gpu_step", [PY, str(ROOT / "bench/gpu_step.py"), *flags, "--out", str(out)], timeout, self.logs,
                      self.env, self.out, gpu=not self.cpu)
        numbers = {"rc": res["rc"], "gpu_mem_peak_mib": res["gpu_mem_peak_mib"]}
        if (out / "gpu_step.json").exists():
            data = json.loads((out / "gpu_step.json").read_text())
            for r in data["rows"]:
                numbers[r["method"]] = {"step_s": round(r["step_time_s"], 2), "peak_gib": r["peak_mem_gib"],
                                        "tok_s": round(r["tokens_per_s"]), "mfu": r["mfu"] and round(r["mfu"], 3)}
        ok = res["rc"] == 0
        rec = {"status": "ok" if ok else "failed", "numbers": numbers}
        if not ok:
            rec["stderr_tail"] = tail(res["stderr"])
        return rec

    # ---- the whole check

    def run(self) -> int:
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        import yaml

        self.preset_path = self.out / "gpu_check.yaml"
        spec = preset(self.cpu)
        spec["rm"]["pairs"]["path"] = str(self.out / "pairs.jsonl")
        self.preset_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        link = ensure_presets_importable(self.env)
        if link:
            self.log(f"lco_cli.presets was not importable: linked {link} -> ../presets for this run")
        try:
            self._run_steps()
        finally:
            if link:
                link.unlink(missing_ok=True)
        summary = {"mode": "cpu-dry-run" if self.cpu else "gpu", "policy": preset(self.cpu)["model"]["policy"],
                   "budget_s": a.budget_s, "wall_s": round(time.perf_counter() - self.t_start, 1),
                   "ok": all(s["status"] == "ok" or (self.cpu and s["status"] == "skipped" and s["name"] == "cuda_tests")
                             for s in self.steps),
                   "steps": [{k: (str(v) if isinstance(v, Path) else v) for k, v in s.items()} for s in self.steps]}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        md = markdown(summary)
        (self.out / "summary.md").write_text(md)
        print(md, flush=True)
        return 0 if summary["ok"] else 1

    def _run_steps(self) -> None:
        a, cpu = self.args, self.cpu
        write_pairs(self.out / "pairs.jsonl")
        # (timeout, minimum time left to start) per step, GPU; the CPU dry run uses the same structure at tiny sizes
        T = (lambda g, c: c if cpu else g)
        self.step("env", T(90, 60), 10, self.env_report)
        self.step("cuda_tests", T(120, 60), T(45, 5), self.cuda_tests)
        sft = self.step("sft", T(150, 60), T(60, 5), lambda t: self.stage("sft", "sft", [], t))
        rm = self.step("rm", T(120, 60), T(50, 5), lambda t: self.stage("rm", "rm", [], t))
        if rm["status"] != "ok":
            # train's DPO advantage reads rm/final; without it train still runs, on the verifier's sparse advantage
            self.train_overrides = ["train.advantage=sparse", "train.reward=verifier"]
            self.log("rm did not finish: train steps fall back to " + " ".join(self.train_overrides))
        tr = self.train_overrides
        variant = tr + (["train.steps=1"] if cpu else [])
        self.step("train", T(120, 60), T(50, 5), lambda t: self.stage("train", "train", tr, t))
        self.step("eval", T(90, 60), T(30, 5), lambda t: self.stage("eval", "eval", [], t))
        probe = self.out / "fsdp_probe.json"
        (self.out / "fsdp_probe.py").write_text(FSDP_PROBE)
        launch = [PY, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "lco_cli/launch/fsdp.yaml"),
                  "--num_processes", "1", "--num_machines", "1", "--main_process_port", str(free_port()),
                  str(self.out / "fsdp_probe.py")]
        fsdp_over = [*variant, "train.eval_every=0", "train.eval_problems=0", "train.checkpoint_every=100"]
        self.step("train_fsdp", T(150, 60), T(60, 5),
                  lambda t: self.stage("train_fsdp", "train", fsdp_over, t, fresh=True, launcher=launch, probe=probe))
        self.step("gpu_step", T(150, 60), T(90, 5), self.gpu_step)
        self.step("train_lora", T(100, 60), T(45, 5),
                  lambda t: self.stage("train_lora", "train", [*variant, "model.lora.enabled=true", "model.lora.save=adapter"], t,
                                       fresh=True))
        self.step("train_split_grad", T(100, 60), T(45, 5),
                  lambda t: self.stage("train_split_grad", "train", [*variant, "train.telemetry.split_grad_norm=true",
                                                                                          "train.telemetry.gradient_gap=1"], t, fresh=True))
        if sft["status"] != "ok":
            self.log("sft failed: rm, train and eval depend on it")


def write_pairs(path: Path) -> None:
    """Preference pairs of 1-digit sums: the right sum chosen over one off by one."""
    rows = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + (1 if (a + b) % 2 else -1))}
            for a in range(10) for b in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def eval_numbers(stage_dir: Path) -> dict:
    """pass@1 ± stderr per (policy, benchmark) from eval/results.json."""
    f = stage_dir / "results.json"
    if not f.exists():
        return {}
    rows = json.loads(f.read_text()).get("results", [])
    return {f"{r['policy']}/{r['benchmark']} {r.get('metric', '')}": f"{r['mean']:.3f}±{r['stderr']:.3f} (n={r.get('n_problems')})"
            for r in rows if isinstance(r.get("mean"), (int, float))}


def ensure_presets_importable(env: dict) -> Path | None:
    """Link lco_cli/presets -> ../presets when `lco_cli.presets` does not import (a checkout run without
    `pip install`): the preset loader lists the bundled presets even for a YAML path."""
    probe = subprocess.run([PY, "-c", "import lco_cli.presets"], env=env, cwd=ROOT, capture_output=True)
    if probe.returncode == 0:
        return None
    link = ROOT / "lco_cli" / "presets"
    if not link.exists():
        link.symlink_to(Path("..") / "presets")
        return link
    return None


def markdown(summary: dict) -> str:
    lines = [f"## lco GPU check ({summary['mode']}, policy `{summary['policy']}`, {summary['wall_s']} s of {summary['budget_s']} s budget)",
             "", "| step | status | seconds | key numbers |", "|---|---|---:|---|"]
    for s in summary["steps"]:
        nums = ", ".join(f"{k}={_fmt(v)}" for k, v in s.get("numbers", {}).items() if v is not None)
        note = f" ({s['note']})" if s.get("note") else ""
        lines.append(f"| {s['name']} | {s['status']}{note} | {s['seconds']} | {nums.replace('|', '/')} |")
    failed = [s for s in summary["steps"] if s["status"] == "failed"]
    for s in failed:
        lines += ["", f"### {s['name']}: stderr tail", "", "```", (s.get("stderr_tail") or "")[-2000:], "```"]
    lines += ["", f"**{'ALL OK' if summary['ok'] else 'NOT OK'}**", ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items() if x is not None) + "}"
    return str(v)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check_out", help="folder for summary.md / summary.json, logs and the run")
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU (checks this script)")
    p.add_argument("--budget-s", type=float, default=None, help="total time budget; steps that no longer fit are skipped "
                   "(default 460 on a GPU, 240 for the dry run)")
    p.add_argument("--only", default="", help="comma-separated step names to run (the others are reported skipped)")
    p.add_argument("--gpu-step-methods", default="lco_dense,grpo", help="bench/gpu_step.py --methods (GPU)")
    p.add_argument("--gpu-step-seq-len", type=int, default=1024, help="bench/gpu_step.py --seq-len (GPU)")
    a = p.parse_args(argv)
    a.only = [x for x in a.only.split(",") if x]
    if a.budget_s is None:
        a.budget_s = 240.0 if a.cpu_dry_run else 460.0
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
