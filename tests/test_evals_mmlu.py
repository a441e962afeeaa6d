"""MMLU / MMLU-Redux through `lco eval`, run by lm-evaluation-harness on local files."""
from __future__ import annotations

import json

import pytest

from conftest import invoke, read_jsonl

pytest.importorskip("lm_eval", reason="mmlu needs the extra: pip install 'lco[lmeval]'")

ROWS = [
    {"question": "What is 1+1?", "choices": ["1", "2", "3", "4"], "answer": 1, "subject": "elementary_mathematics"},
    {"question": "What is 2+2?", "choices": ["4", "2", "3", "5"], "answer": 0, "subject": "elementary_mathematics"},
    {"question": "What is 3+3?", "choices": ["5", "7", "6", "9"], "answer": 2, "subject": "elementary_mathematics"},
    {"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo", "Bern"], "answer": 1, "subject": "geography",
     "error_type": "wrong_groundtruth"},
]


def test_mmlu_and_redux_through_the_harness(fast_preset, workdir, runner):
    (workdir / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.policies=[base]", "eval.benchmarks=[mmlu,mmlu_redux]",
                 "eval.data.mmlu=mmlu.jsonl", "eval.data.mmlu_redux=mmlu.jsonl", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["benchmark"]: r for r in json.loads(res.output[res.output.index("{"):])["results"]}
    import lm_eval

    assert rows["mmlu"]["metric"] == rows["mmlu_redux"]["metric"] == "accuracy"
    assert rows["mmlu"]["harness"] == f"lm-eval {lm_eval.__version__}"
    assert rows["mmlu"]["task_template"] == "lm_eval/tasks/mmlu/default/_default_template_yaml"
    assert rows["mmlu"]["n_problems"] == 4 and rows["mmlu_redux"]["n_problems"] == 3  # the redux drops a flagged row
    samples = read_jsonl(workdir / "run/eval/samples/base/mmlu.jsonl")
    # the harness's multiple-choice rule: correct iff the answer letter has the highest log-likelihood
    for s in samples:
        lls = [ll for ll, _ in s["response"]]
        assert s["correct"] == float(lls.index(max(lls)) == s["answer"])
    assert rows["mmlu"]["mean"] == pytest.approx(sum(s["correct"] for s in samples) / 4, abs=1e-12)


def test_mmlu_needs_a_model_folder(fast_preset, workdir, runner, run_dir):
    (workdir / "mmlu.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.policies=[pi_star]", "eval.benchmarks=[mmlu]",
                 "eval.data.mmlu=mmlu.jsonl")
    assert res.exit_code == 2 and "pi_star" in res.output
