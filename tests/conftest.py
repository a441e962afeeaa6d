"""Shared fixtures: a fast tiny preset and a CLI runner; every test runs in its own tmp dir."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

# A smaller model and shorter stages than the bundled `tiny`, so the CLI tests run in seconds.
FAST = {
    "name": "fast",
    "description": "test preset",
    "seed": 0,
    "model": {"policy": "tiny:hidden=32,layers=2,heads=2,kv_heads=2,intermediate=64"},
    "task": {"op": "add", "digits": 2, "n_test": 40},
    "sft": {"lr": 3e-3, "batch_size": 16, "micro_batch_size": 8, "max_steps": 6, "checkpoint_every": 3,
            "log_every": 1, "eval_problems": 16},
    "rm": {"lr": 1e-3, "batch_size": 8, "micro_batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "log_every": 1,
           "pairs": {"n_prompts": 24, "samples_per_prompt": 4, "temperature": 1.5, "max_new_tokens": 6, "eval_fraction": 0.25}},
    "train": {"lr": 1e-3, "steps": 3, "batch_size": 4, "samples_per_prompt": 2, "micro_batch_size": 8,
              "eval_every": 2, "eval_problems": 8, "checkpoint_every": 2, "loss_chunk_size": 16,
              "rollout": {"max_new_tokens": 6}},
    "eval": {"samples": 2, "limit": 12, "max_new_tokens": 6, "benchmarks": ["arith"]},
}


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fast_preset(workdir) -> Path:
    path = workdir / "fast.yaml"
    path.write_text(yaml.safe_dump(FAST))
    return path


def invoke(runner, *args):
    from lco_cli.cli import cli

    result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def free_port() -> str:
    """A TCP port nobody listens on now: torchrun's rendezvous must not collide with another
    two-process test running at the same time on this machine (the default 29500 would)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_pairs(path: Path, n: int = 40, seed: int = 0) -> None:
    """A local preference-pair file (plain layout) for RM tests: correct vs off-by-a-digit sums."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + rng.choice([-10, -1, 1, 10]))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """One SFT + RM run (RM from a local pairs file) shared by the training tests; copied per test."""
    root = tmp_path_factory.mktemp("prepared")
    preset = root / "fast.yaml"
    preset.write_text(yaml.safe_dump(FAST))
    write_pairs(root / "pairs.jsonl")
    runner = CliRunner()
    assert invoke(runner, "sft", preset, "--run-dir", root / "run").exit_code == 0
    res = invoke(runner, "rm", preset, "--run-dir", root / "run", "rm.pairs.source=file", f"rm.pairs.path={root / 'pairs.jsonl'}")
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture
def run_dir(prepared, workdir):
    shutil.copytree(prepared / "run", workdir / "run")
    shutil.copy(prepared / "fast.yaml", workdir / "fast.yaml")
    return workdir / "run"
