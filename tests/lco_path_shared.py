"""What tests/test_lco_path.py and its two-process worker (tests/lco_path_worker.py) share: the prepared
run's models in float64, the train config of the path checks, and the seeded parameter move that
stands for "later epochs" (z_old frozen in `prepare`, the parameters moved since)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch


def load_prepared(prepared: Path, dtype: torch.dtype = torch.float64) -> dict:
    """The prepared run's preset, SFT policy and its frozen copy, and DPO RM (with φ_ref), all in `dtype`."""
    from lco_cli.config.loader import load
    from lco_cli.rl.advantage_sources import DPOReward
    from lco_cli.rl.update import HiddenStatesLM
    from lco_cli.runtime import models

    _, p = load(str(Path(prepared) / "fast.yaml"), ["train.reward=rm", "train.samples_per_prompt=3"])
    sft, rm = str(Path(prepared) / "run/sft/final"), str(Path(prepared) / "run/rm/final")
    reward = DPOReward(rm, p.model)
    reward.rm.to(dtype), reward.ref.to(dtype)
    policy = HiddenStatesLM(models.load_model(sft, p.model, trainable=True)).to(dtype)
    reference = HiddenStatesLM(models.load_model(sft, p.model, trainable=False)).to(dtype)
    return {"preset": p, "sft": sft, "policy": policy, "reference": reference, "reward": reward}


def path_config(train, **overrides):
    """`train` with the checks' keys: 3 epochs on one minibatch (so `prepare` freezes z_old), micro-batches of 3."""
    return dataclasses.replace(train, **overrides, update_epochs=3, minibatches=1, micro_batch_size=3, samples_per_prompt=3)


@torch.no_grad()
def move_parameters(model: torch.nn.Module) -> None:
    """The same seeded step on every parameter, in every process and dtype (drawn in float64, then rounded):
    the parameters moved since `prepare`."""
    g = torch.Generator().manual_seed(1)
    for q in model.parameters():
        q.add_((0.02 * torch.randn(q.shape, generator=g, dtype=torch.float64)).to(q.dtype))
