"""One process of tests/test_lco_path.py's two-process check (started by `accelerate launch --num_processes 2`).

Each process takes its half of the rollout batch (whole prompt groups, as `lco train` shards prompts),
and for every case runs what `lco train` runs on a rollout batch before the optimizer step: the
`accelerator.prepare`d (DDP) float64 policy, `LCOUpdate.prepare` (z_old frozen), the seeded parameter
move of the single-process check, the loop's `Normaliser` from all-reduced counts, and the loop's
`_backward` (micro-batches under `no_sync` but the last, DDP averaging the gradients). It saves the
reported loss and the parameter gradient it holds afterwards to OUT/rank{r}.pt. A case's `dtype` key
(default float64) picks the models' dtype: float32 is how `lco train` runs the tiny presets.

    lco_path_worker.py PREPARED BATCH.pt CASES.json OUT
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lco_path_shared import load_prepared, move_parameters, path_config


def main(prepared: str, batch_path: str, cases_path: str, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from lco_cli.recipes.train import _backward
    from lco_cli.rl.lco import LCOUpdate
    from lco_cli.rl.update import Normaliser, TrainEnv
    from lco_cli.runtime.optim import make_accelerator

    acc = make_accelerator("no", 0)
    rank, world = acc.process_index, acc.num_processes
    batch = torch.load(batch_path, weights_only=False)
    half = batch.size // world
    mine = batch.subset(list(range(rank * half, (rank + 1) * half)))
    results = {"world": world, "distributed_type": str(acc.distributed_type), "mixed_precision": acc.mixed_precision,
               "rows": mine.size, "ddp": [], "cases": {}}
    loaded = {}  # dtype -> models, the policy `prepare`d as the loop does

    def models_in(dtype: str) -> dict:
        if dtype not in loaded:
            s = load_prepared(Path(prepared), getattr(torch, dtype))
            s["policy"] = acc.prepare(s["policy"])
            s["state"] = {k: v.clone() for k, v in acc.unwrap_model(s["policy"]).state_dict().items()}
            results["ddp"].append(isinstance(s["policy"], DistributedDataParallel))
            loaded[dtype] = s
        return loaded[dtype]

    for name, train in json.loads(Path(cases_path).read_text()).items():
        s = models_in(train.pop("dtype", "float64"))
        policy, inner = s["policy"], acc.unwrap_model(s["policy"])
        inner.load_state_dict(s["state"])
        cfg = path_config(s["preset"].train, **train)
        update = LCOUpdate(cfg, TrainEnv(cfg, policy, s["reference"], s["reward"], acc, chunk_size=5))
        prep, _ = update.prepare(mine)
        move_parameters(inner)  # every process the same step: DDP replicas stay equal
        rows = list(range(mine.size))
        norm = Normaliser(global_tokens=float(acc.reduce(mine.response_len[rows].sum().float(), "sum")),  # as _optimize
                          global_seqs=float(acc.reduce(torch.tensor(float(len(rows))), "sum")), world=world)
        policy.zero_grad(set_to_none=True)
        got = _backward(update, mine, prep, rows, norm, cfg, acc, "all")
        results["cases"][name] = {"loss": got["loss"], "old_head": prep.old_head is not None,
                                  "global_tokens": norm.global_tokens, "global_seqs": norm.global_seqs,
                                  "grads": {n: q.grad.detach().clone() for n, q in inner.named_parameters()}}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
