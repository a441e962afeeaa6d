"""A stage's identity follows what it reads: keys the schema marks operational (checkpoints, logs)
never make a finished stage "done with a different config", and an eval of pi_star follows the
train.beta it is built with (`evals.policies`)."""
from __future__ import annotations

import json

from conftest import invoke

RM_FILE = ["rm.pairs.source=file", "rm.pairs.path=pairs.jsonl"]
SHORT_TRAIN = ["train.steps=2", "train.eval_every=0", "train.checkpoint_every=1"]
PI_STAR_EVAL = ["eval.policies=[sft,pi_star]", "eval.limit=4", "eval.samples=1"]


def status(run, stage):
    return json.loads((run / stage / "status.json").read_text())


def run_json(runner, *args):
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def rm_file(run):
    return ["rm.pairs.source=file", f"rm.pairs.path={status(run, 'rm')['inputs']['rm']['pairs']['path']}"]


def test_operational_keys_leave_a_finished_stage_done(runner, run_dir):
    """Checkpoint and log cadence change no result: `lco run` skips the done stages, `lco sft` is not refused."""
    operational = ["sft.log_every=2", "sft.checkpoint_every=2", "sft.keep_checkpoints=1", "rm.log_every=3"]
    summary = run_json(runner, *rm_file(run_dir), *operational, "--stages", "sft,rm")
    assert summary["stages"] == {"sft": "skip", "rm": "skip"}
    res = invoke(runner, "sft", "fast.yaml", "--run-dir", "run", "sft.log_every=2", "sft.checkpoint_every_minutes=5")
    assert res.exit_code == 0, res.output  # an explicit rerun, not "done with a different config"
    assert invoke(runner, "train", "fast.yaml", "--run-dir", "run", *RM_FILE, *SHORT_TRAIN).exit_code == 0
    changed = ["train.checkpoint_every=2", "train.log_every=2", "train.log_rollouts=0", "train.keep_checkpoints=3"]
    summary = run_json(runner, *RM_FILE, *SHORT_TRAIN, *changed, "--stages", "train")
    assert summary["stages"] == {"train": "skip"}


def test_a_stage_recorded_with_operational_keys_stays_done(runner, run_dir):
    """A status written when operational keys were still hashed compares without them."""
    from lco_cli.config import config_hash

    st = status(run_dir, "sft")
    st["inputs"]["sft"].update(checkpoint_every=3, keep_checkpoints=2, log_every=1, checkpoint_every_minutes=None)
    st["config_hash"] = config_hash(st["inputs"])
    (run_dir / "sft/status.json").write_text(json.dumps(st))
    assert run_json(runner, "--stages", "sft")["stages"] == {"sft": "skip"}


def test_pi_star_eval_follows_train_beta(runner, run_dir):
    """eval of [sft, pi_star] reads train.beta (not the train stage): a change of train.lr keeps it
    done, a change of train.beta is named (refused alone, rerun with --force or after train reruns)."""
    up = rm_file(run_dir)
    assert run_json(runner, *up, *PI_STAR_EVAL, "--stages", "eval")["stages"] == {"eval": "run"}
    assert status(run_dir, "eval")["inputs"]["train"] == {"beta": 1.0}
    assert run_json(runner, *up, *PI_STAR_EVAL, "train.lr=0.01", "--stages", "eval")["stages"] == {"eval": "skip"}
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *up, *PI_STAR_EVAL, "train.beta=0.05", "--stages", "eval")
    assert res.exit_code == 2 and "train.beta" in res.output and "--force" in res.output
    summary = run_json(runner, *up, *PI_STAR_EVAL, "train.beta=0.05", "--stages", "eval", "--force", "eval")
    assert summary["stages"] == {"eval": "run"}
    assert status(run_dir, "eval")["inputs"]["train"] == {"beta": 0.05}
    # The observed case: train rerun with a new beta; eval (not reading train's output) follows it.
    res = invoke(runner, "run", "fast.yaml", "--run-dir", "run", *up, *SHORT_TRAIN, *PI_STAR_EVAL, "train.beta=0.5",
                 "--stages", "train,eval", "--force", "train", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stages"] == {"train": "run", "eval": "run"}
    assert "run: eval (run: train reruns first; rerun into a staging area (train.beta changed since it ran)" in res.stderr
    assert status(run_dir, "eval")["inputs"]["train"] == {"beta": 0.5}
    # Without pi_star, train.beta is not an eval input.
    run_json(runner, *up, "eval.policies=[sft]", "eval.limit=4", "eval.samples=1", "--stages", "eval", "--force", "eval")
    assert "train" not in status(run_dir, "eval")["inputs"]
