"""Compatibility shim: the training helpers now live in `runtime.stage` (lifecycle),
`runtime.checkpoint`, `runtime.progress` and `runtime.optim`; the stage loops still import them
from here until they move to `lco_cli.recipes`."""
from __future__ import annotations

from lco_cli.runtime.checkpoint import INTERRUPT_ENV, checkpoint_due, load_checkpoint, maybe_interrupt, save_checkpoint
from lco_cli.runtime.optim import (DivergenceWatch, batch_indices, check_finite_parameters, grad_norm_of, make_accelerator,
                                   make_optimizer, make_scheduler, optimizer_step, shard, total_steps)
from lco_cli.runtime.progress import Progress
from lco_cli.runtime.stage import clear_stage, stage_config_hash, stage_inputs, stage_run, write_json

__all__ = ["INTERRUPT_ENV", "DivergenceWatch", "Progress", "batch_indices", "check_finite_parameters", "checkpoint_due",
           "clear_stage", "grad_norm_of", "load_checkpoint", "make_accelerator", "make_optimizer", "make_scheduler",
           "maybe_interrupt", "optimizer_step", "save_checkpoint", "shard", "stage_config_hash", "stage_inputs", "stage_run",
           "total_steps", "write_json"]
