"""What every stage loop (`lco_cli.recipes`) uses, in one import: the lifecycle (`runtime.stage`),
checkpoints (`runtime.checkpoint`), progress (`runtime.progress`), accelerator/optimizer/data order
(`runtime.optim`)."""
from __future__ import annotations

from lco_cli.runtime.checkpoint import INTERRUPT_ENV, checkpoint_due, load_checkpoint, maybe_interrupt, save_checkpoint
from lco_cli.runtime.optim import (DivergenceWatch, batch_indices, check_finite_parameters, grad_norm_of, make_accelerator,
                                   make_optimizer, make_scheduler, optimizer_step, shard, total_steps)
from lco_cli.runtime.progress import Progress
from lco_cli.runtime.stage import clear_stage, stage_config_hash, stage_inputs, stage_run

__all__ = ["INTERRUPT_ENV", "DivergenceWatch", "Progress", "batch_indices", "check_finite_parameters", "checkpoint_due",
           "clear_stage", "grad_norm_of", "load_checkpoint", "make_accelerator", "make_optimizer", "make_scheduler",
           "maybe_interrupt", "optimizer_step", "save_checkpoint", "shard", "stage_config_hash", "stage_inputs", "stage_run",
           "total_steps"]
