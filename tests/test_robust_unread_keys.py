"""No silent misconfiguration: a `train` key the preset sets but the chosen algorithm's loss does
not read (the algorithm specs' `reads_when`) is a warning naming the key and the setting that would
make it count; validate still succeeds."""
from __future__ import annotations

import sys

import pytest

from conftest import invoke


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_unread_rewards.py").write_text("def score(prompt, completion, row):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_unread_rewards:score"
    sys.modules.pop("my_unread_rewards", None)


def test_a_reward_the_dpo_advantage_does_not_read_is_a_warning(runner, fast_preset, reward_module):
    res = invoke(runner, "validate", fast_preset, f"train.reward={reward_module}")
    assert res.exit_code == 0, res.output
    assert (f"warning: train.reward is set to '{reward_module}' but algo=lco with advantage=dpo does not read it; "
            "set train.advantage=sparse to train on it") in res.stderr
    res = invoke(runner, "validate", fast_preset, f"train.reward={reward_module}", "train.advantage=sparse")
    assert res.exit_code == 0 and "warning" not in res.stderr


def test_lco_keys_under_a_baseline_are_a_warning(runner, fast_preset):
    res = invoke(runner, "validate", fast_preset, "train.algo=grpo", "train.beta=0.5", "train.advantage_norm=batch")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("warning: train.")]
    assert lines == ["warning: train.advantage_norm is set to 'batch' but algo=grpo does not read it; set train.algo=lco to train on it",
                     "warning: train.beta is set to 0.5 but algo=grpo does not read it; set train.algo=lco to train on it"]
    assert "warning" not in invoke(runner, "validate", fast_preset).stderr
