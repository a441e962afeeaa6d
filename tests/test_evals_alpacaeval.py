"""AlpacaEval 2.0 through `lco eval` against a real HTTP judge on 127.0.0.1 (tests/judge_server.py):
results, the judgment cache, resume after an interrupted judging pass, judge failures, a missing
key variable; and the LC win rate against the `alpaca-eval` package's own function."""
from __future__ import annotations

import json
import random

import pytest

from conftest import invoke, read_jsonl
from judge_server import JudgeServer, expected_preference

pytest.importorskip("alpaca_eval", reason="the alpacaeval benchmark needs the extra: pip install 'lco[alpaca]'")

KEY_VAR = "LCO_TEST_JUDGE_KEY"
SECRET = "sk-test-secret-0123456789"
N_ITEMS = 12


def write_alpaca(path, n=N_ITEMS):
    """AlpacaEval-schema rows; references alternate between short and long so that the judge's
    length preference gives the policy some wins and some losses."""
    rows = [{"instruction": f"Add {i} and {i + 1}.", "output": "7" if i % 2 else f"The sum is {2 * i + 1}, done.",
             "generator": "gpt4_1106_preview", "dataset": "fixture"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_gamed(path, n=N_ITEMS, seed=0):
    """A df_gamed.csv of the published schema: two gamed baselines (verbose, concise) per instruction."""
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for model, sign in (("gamed_verbose", 1), ("gamed_concise", -1)):
        for i in range(n):
            d = sign * rng.uniform(0.2, 2.0)
            rows.append({"model": model, "index": i, "instruction_difficulty": rng.uniform(-1, 1),
                         "preference": min(max(0.5 + 0.2 * d + rng.uniform(-0.2, 0.2), 0.01), 0.99),
                         "std_delta_len": d, "not_gamed_baseline": False})
    difficulty = {r["index"]: r["instruction_difficulty"] for r in rows[:n]}
    for r in rows:  # one difficulty per instruction, as in the published file
        r["instruction_difficulty"] = difficulty[r["index"]]
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture
def alpaca_files(fast_preset, workdir, monkeypatch):
    write_alpaca(workdir / "alpaca.jsonl")
    write_gamed(workdir / "df_gamed.csv")
    monkeypatch.setenv(KEY_VAR, SECRET)
    return workdir


def eval_args(server, *extra):
    return ["eval", "fast.yaml", "--run-dir", "run", "eval.policies=[base]", "eval.benchmarks=[alpacaeval]",
            "eval.data.alpacaeval=alpaca.jsonl", "eval.judge.lc_data=df_gamed.csv", f"eval.judge.base_url={server.base_url}",
            "eval.judge.model=judge-test", f"eval.judge.api_key_env={KEY_VAR}", "eval.judge.backoff=0", *extra]


def test_alpacaeval_results_match_the_judge_and_the_cache_is_reused(alpaca_files, runner):
    with JudgeServer() as server:
        res = invoke(runner, *eval_args(server), "--json")
        assert res.exit_code == 0, res.output
        assert len(server.requests) == N_ITEMS
        assert all(h["Authorization"] == f"Bearer {SECRET}" for h in server.headers)
        first = server.requests[0]
        assert first["model"] == "judge-test" and first["max_tokens"] == 1 and first["logprobs"] and first["top_logprobs"] == 5
        rows = {r["metric"]: r for r in json.loads(res.output[res.output.index("{"):])["results"]}
        assert set(rows) == {"win_rate", "lc_win_rate"}
        samples = read_jsonl(alpaca_files / "run/eval/samples/base/alpacaeval.jsonl")
        assert len(samples) == N_ITEMS and {s["policy_first"] for s in samples} == {True, False}
        # The judge prefers the longer output at 0.8: the expected preference of every pair, from
        # the samples file alone; WR = mean(preference - 1). 1e-9: float summation order only.
        expected = [expected_preference(s["generation"], s["reference"], s["policy_first"]) for s in samples]
        assert [s["preference"] for s in samples] == pytest.approx(expected, abs=1e-9)
        assert rows["win_rate"]["mean"] == pytest.approx(sum(p - 1 for p in expected) / N_ITEMS, abs=1e-9)
        assert 0 < rows["lc_win_rate"]["mean"] < 1 and rows["win_rate"]["judge"] == "judge-test"
        cache = read_jsonl(alpaca_files / "run/judge_cache.jsonl")
        assert len(cache) == N_ITEMS
        # A second eval of the same config starts the stage afresh (it was done) and generates the
        # same seeded responses again: every judgment comes from the cache, none is paid twice.
        res = invoke(runner, *eval_args(server))
        assert res.exit_code == 0, res.output
        assert len(server.requests) == N_ITEMS
    # the key is never written anywhere in the run directory
    for f in (alpaca_files / "run").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_interrupted_judging_resumes_without_paying_twice(alpaca_files, runner):
    with JudgeServer(mode="fail_after", budget=5) as server:
        res = invoke(runner, *eval_args(server, "eval.judge.concurrency=1", "eval.judge.max_retries=1"))
        assert res.exit_code == 1
        assert f"{server.base_url}/chat/completions" in res.output and "HTTP 500" in res.output
        assert "Traceback" not in res.output
        assert len(read_jsonl(alpaca_files / "run/judge_cache.jsonl")) == 5  # judgments so far kept
        status = json.loads((alpaca_files / "run/eval/status.json").read_text())
        assert status["state"] == "failed"
        gen_file = alpaca_files / "run/eval/samples/base/alpacaeval.generations.jsonl"
        generations = gen_file.read_text()
        sent_before = len(server.requests)  # 5 answered + 2 attempts of the 6th
        assert sent_before == 7
        server.mode = "ok"
        res = invoke(runner, *eval_args(server, "eval.judge.concurrency=1", "eval.judge.max_retries=1"))
        assert res.exit_code == 0, res.output
        assert len(server.requests) - sent_before == N_ITEMS - 5  # only the pairs not judged yet
        assert gen_file.read_text() == generations  # generations were not redone
    rows = json.loads((alpaca_files / "run/eval/results.json").read_text())["results"]
    assert [r["metric"] for r in rows] == ["win_rate", "lc_win_rate"] and rows[0]["n_problems"] == N_ITEMS


def test_judge_timeout_is_retried_then_one_clear_error(alpaca_files, runner):
    with JudgeServer(mode="timeout", delay=2.0) as server:
        res = invoke(runner, *eval_args(server, "eval.judge.timeout=0.3", "eval.judge.max_retries=1",
                                        "eval.judge.concurrency=1", "eval.limit=1"))
    assert res.exit_code == 1
    assert f"judge {server.base_url}/chat/completions: request failed after 2 attempts (timed out)" in res.output
    assert len(server.requests) == 2 and "Traceback" not in res.output


def test_missing_key_variable_exits_2_naming_it(alpaca_files, runner, monkeypatch):
    monkeypatch.delenv(KEY_VAR)
    with JudgeServer() as server:
        res = invoke(runner, *eval_args(server))
    assert res.exit_code == 2 and KEY_VAR in res.output
    assert not server.requests and not (alpaca_files / "run/eval/samples").exists()  # nothing generated


def test_lc_win_rate_agrees_with_alpaca_eval(tmp_path, monkeypatch):
    """Our featurisation (df_gamed from a local file) against the package's
    get_length_controlled_winrate, which downloads df_gamed.csv: its download is pointed at the
    same fixture file."""
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    from lco_cli.evals.alpacaeval import length_controlled_win_rate

    write_gamed(tmp_path / "df_gamed.csv", n=40)
    rng = random.Random(1)
    refs = ["r" * rng.randint(5, 80) for _ in range(40)]
    outs = ["o" * rng.randint(5, 120) for _ in range(40)]
    prefs = [min(max(1.5 + (len(o) - len(r)) / 200 + rng.uniform(-0.3, 0.3), 1.0), 2.0) for r, o in zip(refs, outs)]
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kw: str(tmp_path / "df_gamed.csv"))
    annotations = pd.DataFrame({"preference": prefs, "output_1": refs, "output_2": outs, "index": range(40),
                                "generator_1": "reference", "generator_2": "policy", "annotator": "judge"})
    theirs = glm_winrate.get_length_controlled_winrate(annotations, save_weights_dir=None)
    ours = length_controlled_win_rate(prefs, refs, outs, list(range(40)), pd.read_csv(tmp_path / "df_gamed.csv"))
    # Same data, same design matrix and the same seeded fit: equal up to float summation order.
    assert ours[0] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-9)
    assert ours[1] == pytest.approx(theirs["lc_standard_error"], abs=1e-9)


def test_wrong_endpoint_path_fails_at_once(alpaca_files, runner):
    """A 404 (wrong base_url) is not retried: one request, one message naming the URL."""
    with JudgeServer() as server:
        args = eval_args(server, "eval.limit=2", "eval.judge.concurrency=1")
        args = [a if not a.startswith("eval.judge.base_url=") else f"eval.judge.base_url={server.base_url}/wrong" for a in args]
        res = invoke(runner, *args)
    assert res.exit_code == 1 and len(server.requests) == 1
    assert f"judge {server.base_url}/wrong/chat/completions: HTTP 404" in res.output and "not retried" in res.output
