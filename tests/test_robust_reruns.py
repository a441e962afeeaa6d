"""Reruns never destroy (issue 14 §1–2): a rerun of a finished stage writes into a staging area and
replaces the stage only when it succeeds; a changed config is refused unless --force; a stage
records the upstream outputs it read, and `lco run` reruns (and says why) when they changed."""
from __future__ import annotations

import json

from conftest import invoke, read_jsonl
from safetensors.torch import load_file

RM_FILE = ["rm.pairs.source=file", "rm.pairs.path=pairs.jsonl"]
SHORT_TRAIN = ["train.steps=2", "train.eval_every=0", "train.checkpoint_every=1"]


def status(run, stage):
    return json.loads((run / stage / "status.json").read_text())


def test_failed_rerun_keeps_the_finished_stage(runner, run_dir, workdir):
    """`lco rm` rerun with an empty pairs file fails (exit 2, naming key and file) and leaves rm/ as it was."""
    before = load_file(str(run_dir / "rm/final/model.safetensors"))
    old_status = status(run_dir, "rm")
    (workdir / "empty.jsonl").write_text("")
    res = invoke(runner, "rm", "fast.yaml", "--run-dir", "run", "rm.pairs.source=file", "rm.pairs.path=empty.jsonl", "--force")
    assert res.exit_code == 2 and "rm.pairs.path" in res.output and "empty.jsonl" in res.output and "is empty" in res.output
    assert status(run_dir, "rm") == old_status  # still done, same hash: nothing touched
    after = load_file(str(run_dir / "rm/final/model.safetensors"))
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)


def test_changed_config_refused_then_forced_rerun_is_staged(runner, run_dir, workdir, monkeypatch):
    assert invoke(runner, "train", "fast.yaml", "--run-dir", "run", *RM_FILE, *SHORT_TRAIN).exit_code == 0
    done = status(run_dir, "train")
    weights = load_file(str(run_dir / "train/final/model.safetensors"))
    # A changed config on a done stage: refused, naming the key; nothing touched.
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", *RM_FILE, *SHORT_TRAIN, "train.beta=0.5")
    assert res.exit_code == 2 and "train.beta" in res.output and "--force" in res.output
    assert status(run_dir, "train") == done
    # --force, killed at step 2 (after the step-1 checkpoint): the finished output is untouched.
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "2")
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", *RM_FILE, *SHORT_TRAIN, "train.beta=0.5", "--force")
    assert res.exit_code == 130 and "staging area" in res.output and "step-000001" in res.output
    assert status(run_dir, "train") == done
    same = load_file(str(run_dir / "train/final/model.safetensors"))
    assert all((weights[k] == same[k]).all() for k in weights)
    staged = json.loads((workdir / "run/.train.staging/status.json").read_text())
    assert staged["state"] == "failed" and staged["interrupted"]
    # The next run (no --force needed: that rerun was asked for) resumes the staged rerun and swaps it in.
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", *RM_FILE, *SHORT_TRAIN, "train.beta=0.5")
    assert res.exit_code == 0, res.output
    new = status(run_dir, "train")
    assert new["state"] == "done" and new["inputs"]["train"]["beta"] == 0.5 and new["final_digest"] != done["final_digest"]
    assert [r["step"] for r in read_jsonl(run_dir / "train/metrics.jsonl")] == [1, 2]
    assert not (workdir / "run/.train.staging").exists()
    assert json.loads((run_dir / "run.json").read_text())["stages"]["train"]["state"] == "done"


def test_upstream_change_reruns_downstream_and_says_why(runner, run_dir):
    """`lco sft … sft.lr=X --force` then `lco run … sft.lr=X`: sft is skipped, rm reruns because the
    SFT output it was built on changed (and was marked stale when the new SFT was swapped in)."""
    res = invoke(runner, "sft", "fast.yaml", "--run-dir", "run", "sft.lr=0.002", "--force")
    assert res.exit_code == 0, res.output
    assert "output changed" not in status(run_dir, "sft").get("stale", "")
    assert "'sft' was rerun" in status(run_dir, "rm")["stale"]
    rm_pairs = ["rm.pairs.source=file", f"rm.pairs.path={status(run_dir, 'rm')['inputs']['rm']['pairs']['path']}"]
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *rm_pairs, "sft.lr=0.002", "--stages", "sft,rm", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["stages"] == {"sft": "skip", "rm": "run"}
    assert "sft output changed" in summary["reasons"]["rm"]
    assert "run: rm (run: rerun into a staging area (sft output changed" in res.stderr
    rm = status(run_dir, "rm")
    assert rm["upstream"]["sft"]["final"] == status(run_dir, "sft")["final_digest"] and "stale" not in rm
    # Nothing changed since: both skipped.
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *rm_pairs, "sft.lr=0.002", "--stages", "sft,rm", "--json")
    assert json.loads(res.stdout)["stages"] == {"sft": "skip", "rm": "skip"}


def test_run_removes_a_replaced_output_left_by_a_kill_after_the_swap(runner, run_dir, workdir):
    """Killed between the atomic swap and the removal of the old output: `lco run` cleans it up."""
    leftover = workdir / "run/.sft.staging"
    leftover.mkdir()
    (leftover / "status.json").write_text(json.dumps({"state": "done"}))
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", "--stages", "sft", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["stages"] == {"sft": "skip"}
    assert not leftover.exists()
