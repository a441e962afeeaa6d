"""One process of tests/test_stability.py's multi-process check (`accelerate launch --num_processes 2`, the
bundled ddp or fsdp config): its half of a fixed rollout batch (whole prompt groups), the gradient-gap
probe around two SGD steps through the `accelerator.prepare`d policy; rank 0 writes the metrics row.

Under the fsdp config, FSDP runs on the CPU processes through tests/cpu_fsdp.py.

    gap_worker.py SFT_MODEL_DIR BATCH.pt OUT.json
"""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import torch
from cpu_fsdp import enable_cpu_fsdp

enable_cpu_fsdp()


def main(model_dir: str, batch_path: str, out: str) -> None:
    from gap_shared import make_env, measured_update

    from lco_cli.config.schema import ModelConfig
    from lco_cli.engines import sharding
    from lco_cli.rl.update import HiddenStatesLM
    from lco_cli.runtime import models
    from lco_cli.runtime.optim import make_accelerator

    acc = make_accelerator("no", 0)
    rank, world = acc.process_index, acc.num_processes
    batch = torch.load(batch_path, weights_only=False)
    half = batch.size // world
    mine = batch.subset(list(range(rank * half, (rank + 1) * half)))
    policy = HiddenStatesLM(models.load_model(model_dir, ModelConfig(), trainable=True))
    policy = sharding.ready_for_fsdp(policy, SimpleNamespace(eval_problems=0, checkpoint_every=1, steps=1))
    policy = acc.prepare(policy)
    sharded = sharding.is_sharded(acc.unwrap_model(policy))
    row = measured_update(make_env(policy, acc), mine, batch.size, sharded=sharded)
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({**row, "world": world, "sharded": sharded, "distributed_type": str(acc.distributed_type)}, fh)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
