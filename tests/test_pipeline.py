"""`lco eval`, `lco run`, `lco report`, `lco compare` through the CLI, and the π* policy."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import FAST, invoke, read_jsonl
from conftest import write_pairs

RM_FILE = ["rm.pairs.source=file", "rm.pairs.path=pairs.jsonl"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One full `lco run` on the fast preset (RM from a local pairs file), shared by the module."""
    root = tmp_path_factory.mktemp("pipe")
    (root / "fast.yaml").write_text(yaml.safe_dump(FAST))
    write_pairs(root / "pairs.jsonl")
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        res = invoke(CliRunner(), "run", "fast.yaml", "--run-dir", "run", *RM_FILE, "--json")
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    return root, res


@pytest.fixture
def copy_run(pipeline, workdir):
    root, _ = pipeline
    shutil.copytree(root / "run", workdir / "run")
    shutil.copy(root / "fast.yaml", workdir / "fast.yaml")
    shutil.copy(root / "pairs.jsonl", workdir / "pairs.jsonl")
    return workdir / "run"


def test_full_chain_writes_every_stage(pipeline):
    root, res = pipeline
    summary = json.loads(res.stdout)  # --json: stdout is pure JSON (progress and logs go to stderr)
    assert summary["stages"] == {"sft": "run", "rm": "run", "train": "run", "eval": "run"}
    run = root / "run"
    for stage in ("sft", "rm", "train"):
        assert (run / stage / "final" / "model.safetensors").exists()
        assert json.loads((run / stage / "status.json").read_text())["state"] == "done"
    results = json.loads((run / "eval/results.json").read_text())["results"]
    assert [(r["policy"], r["benchmark"]) for r in results] == [("sft", "arith"), ("train", "arith")]
    for r in results:
        assert set(r) == {"policy", "benchmark", "metric", "mean", "stderr", "n_problems", "k"}
        assert r["metric"] == "pass@1" and r["n_problems"] == 12 and r["k"] == 2
    samples = read_jsonl(run / "eval/samples/train/arith.jsonl")
    assert len(samples) == 24
    assert {"id", "prompt", "generation", "extracted", "correct", "answer"} <= set(samples[0])
    assert summary["results"] == results


def test_rerun_skips_done_stages(copy_run, runner):
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *RM_FILE, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert set(summary["stages"].values()) == {"skip"}


def test_changed_config_refused_then_forced(copy_run, runner):
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *RM_FILE, "train.beta=0.5")
    assert res.exit_code == 2 and "stage 'train'" in res.output and "train.beta" in res.output
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *RM_FILE, "train.beta=0.5", "--force", "train", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["stages"] == {"sft": "skip", "rm": "skip", "train": "run", "eval": "run"}


def test_interrupted_stage_resumes_in_run(copy_run, runner, monkeypatch):
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "3")
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *RM_FILE, "train.steps=4", "train.checkpoint_every=2",
                 "--force", "train")
    assert res.exit_code == 130
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *RM_FILE, "train.steps=4", "train.checkpoint_every=2", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["stages"]["train"] == "resume" and summary["stages"]["eval"] == "run"
    assert [r["step"] for r in read_jsonl(copy_run / "train/metrics.jsonl") if r["step"] > 0] == [1, 2, 3, 4]


def test_seeds_write_aggregate(copy_run, runner, workdir):
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "multi", *RM_FILE, "--seeds", "0,1", "sft.max_steps=2",
                 "rm.max_steps=1", "train.steps=1", "train.eval_every=0", "--json")
    assert res.exit_code == 0, res.output
    agg = json.loads((workdir / "multi/aggregate.json").read_text())
    assert agg["seeds"] == [0, 1]
    assert {(r["policy"], r["benchmark"]) for r in agg["results"]} == {("sft", "arith"), ("train", "arith")}
    assert all(r["n_seeds"] == 2 and "std" in r for r in agg["results"])
    assert (workdir / "multi/seed-1/eval/results.json").exists()
    assert json.loads((workdir / "multi/seed-1/run.json").read_text())["config_hash"] != \
        json.loads((workdir / "multi/seed-0/run.json").read_text())["config_hash"]
    res = invoke(runner, "compare", "multi", "--json")
    rows = json.loads(res.output)["rows"]
    assert all(r["err_kind"] == "std" for r in rows)


def test_report_writes_valid_pngs(copy_run, runner):
    res = invoke(runner, "report", "run")
    assert res.exit_code == 0, res.output
    rep = copy_run / "report"
    for name in ("train_curves.png", "sft_curves.png", "rm_curves.png", "eval.png"):
        data = (rep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        from PIL import Image

        img = Image.open(rep / name)
        assert img.size[0] > 300 and sum(1 for c in img.convert("L").histogram() if c) > 10  # not blank
    md = (rep / "report.md").read_text()
    assert "![train curves](train_curves.png)" in md and "| policy | arith |" in md


def test_compare_json_schema_and_markdown(copy_run, runner, workdir):
    shutil.copytree(copy_run, workdir / "run_b")
    res = invoke(runner, "compare", "run", "run_b", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["rows"]
    assert len(rows) == 4
    for r in rows:
        assert set(r) == {"run", "policy", "benchmark", "metric", "mean", "err", "err_kind", "n_problems", "k", "n_seeds"}
        assert r["err_kind"] == "stderr" and r["metric"] == "pass@1"
    md = invoke(runner, "compare", "run", "--markdown").output
    assert md.splitlines()[2] == "| policy | arith |"
    assert invoke(runner, "compare", "nope").exit_code == 3


def test_eval_policies_and_local_math_benchmark(copy_run, runner, workdir):
    (workdir / "m500.jsonl").write_text(json.dumps({"problem": "What is 1+1?", "answer": "2"}) + "\n")
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.policies=[pi_star,rm,base]",
                 "eval.benchmarks=[arith,math500]", "eval.data.math500=m500.jsonl", "eval.temperature=0", "--json",
                 "--force")  # eval is done with another config: a rerun must be asked for
    assert res.exit_code == 0, res.output
    results = json.loads(res.output[res.output.index("{"):])["results"]
    assert {(r["policy"], r["benchmark"]) for r in results} == {(p, b) for p in ("pi_star", "rm", "base") for b in ("arith", "math500")}
    assert all(r["k"] == 2 for r in results)
    line = read_jsonl(copy_run / "eval/samples/pi_star/math500.jsonl")[0]
    assert "Please reason step by step" in line["prompt"]


def test_eval_missing_inputs(copy_run, runner):
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.benchmarks=[math500]", "eval.data.math500=missing.jsonl")
    assert res.exit_code == 3 and "missing.jsonl" in res.output
    (copy_run.parent / "noanswer.jsonl").write_text(json.dumps({"problem": "What is 1+1?"}) + "\n")
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.benchmarks=[math500]", "eval.data.math500=noanswer.jsonl",
                 "--force")  # eval is done with another config
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output  # a wrong file, not a missing one
    assert "eval.data.math500: noanswer.jsonl: missing field 'answer' for benchmark 'math500'" in res.output
    shutil.rmtree(copy_run / "train")
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run")
    assert res.exit_code == 3 and "run/train/final" in res.output


# ------------------------------------------------------------------ π*


def test_pi_star_logits_formula_and_large_beta():
    from lco_cli.engines.composite import pi_star_logits

    g = torch.Generator().manual_seed(0)
    z_sft, z_rm, z_ref = (torch.randn(3, 7, generator=g) for _ in range(3))
    beta = 0.5
    want = z_sft + (torch.log_softmax(z_rm, -1) - torch.log_softmax(z_ref, -1)) / beta
    torch.testing.assert_close(pi_star_logits(z_sft, z_rm, z_ref, beta), want)
    # by hand for one entry (float32 logsumexp of 7 values: relative error ~1e-7, so rel=1e-6)
    row = 0
    adv0 = (z_rm[row, 0] - torch.logsumexp(z_rm[row], 0)) - (z_ref[row, 0] - torch.logsumexp(z_ref[row], 0))
    assert float(pi_star_logits(z_sft, z_rm, z_ref, beta)[row, 0]) == pytest.approx(float(z_sft[row, 0] + adv0 / beta), rel=1e-6)
    # β → ∞: π* → the SFT distribution (at β = 1e6 the shift A/β is ~1e-6, hence atol 1e-5)
    p_big = torch.softmax(pi_star_logits(z_sft, z_rm, z_ref, 1e6), -1)
    torch.testing.assert_close(p_big, torch.softmax(z_sft, -1), atol=1e-5, rtol=0)


def test_composite_engine_matches_hf_greedy(tmp_path):
    """A single-model composite decodes exactly like HF generate (greedy), KV caches included."""
    from lco_cli.engines.composite import CompositeEngine
    from lco_cli.engines.generation import HFEngine
    from lco_cli.runtime.models import build_tiny

    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = build_tiny("tiny:hidden=32,layers=2,heads=2,kv_heads=2,intermediate=64", 3, tmp_path / "m")
    model, tok = AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    tok.padding_side = "left"
    prompts = [tok(p)["input_ids"] for p in ("12*34=", "5+6=", "99*99=")]
    hf = HFEngine(model, tok).generate(prompts, 1, temperature=0, max_new_tokens=6)
    comp = CompositeEngine([model], lambda z: z[0], tok).generate(prompts, 1, temperature=0, max_new_tokens=6)
    assert hf.response_ids == comp.response_ids


def test_top_p_sampling_keeps_the_nucleus():
    from lco_cli.engines.composite import sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(sample_next(logits, 1.0, 0.8)) for _ in range(300)}
    assert draws == {0, 1}
    assert int(sample_next(logits, 0.0, 1.0)) == 0


def test_cpu_path_never_imported_vllm(pipeline):
    import sys

    assert "vllm" not in sys.modules
