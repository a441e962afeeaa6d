"""`lco sft`: supervised warm-up on responses (loss on response tokens only)."""
from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import torch

from lco_cli.data.sft import sft_pairs, tokenize_pair
from lco_cli.engines.generation import pack
from lco_cli.engines.scoring import token_logprobs
from lco_cli.errors import ConfigError
from lco_cli.runtime import models
from lco_cli.runtime.rundir import atomic_write_json
from lco_cli.runtime.trackers import publish
from lco_cli.runtime.training import (Progress, batch_indices, checkpoint_due, load_checkpoint, make_accelerator,
    make_optimizer, make_scheduler, maybe_interrupt, optimizer_step, save_checkpoint, shard, stage_run, total_steps)
from lco_cli.tasks import get_task, greedy_accuracy

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.commands.common import Context


def run_sft(ctx: Context) -> dict:
    p, cfg = ctx.preset, ctx.preset.sft
    acc = make_accelerator(cfg.mixed_precision, p.seed)
    task = get_task(p.task, p.seed)  # bad task data fails here, before the stage folder is touched
    with stage_run(ctx.run, ctx.preset_name, p, "sft", acc) as sd:
        init = models.resolve_model_ref(cfg.init_from, ctx.run, p)
        tok = models.load_tokenizer(init, p.model)
        examples = [tokenize_pair(tok, pair, cfg.max_length) for pair in sft_pairs(cfg.data, tok, task)]
        if not examples:
            raise ConfigError(f"sft.data: no training examples in {cfg.data.source}")
        model = models.load_model(init, p.model, trainable=True)
        steps = total_steps(len(examples), cfg.batch_size, cfg.epochs, cfg.max_steps)
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
        sched = make_scheduler(opt, steps, int(cfg.warmup_ratio * steps))
        model, opt, sched = acc.prepare(model, opt, sched)
        state = load_checkpoint(sd, acc) or {"step": 0}
        start = state["step"]
        if acc.is_main_process:
            sd.metrics.truncate_after(start)
        progress = Progress("sft", steps, start, enabled=acc.is_main_process, every=cfg.log_every)
        trainable = [q for q in model.parameters() if q.requires_grad]
        t_start = t_last = time.time()
        tokens_since = 0
        for step in range(start + 1, steps + 1):
            batch = [examples[i] for i in batch_indices(step - 1, cfg.batch_size, len(examples), p.seed)]
            # Normalise by the *global* number of response tokens so that any split into processes
            # and micro-batches gives the same gradient as one big batch (DDP averages over ranks).
            global_tokens = sum(len(r) for _, r in batch)
            mine = shard(batch, acc.process_index, acc.num_processes)
            loss_total = _accumulate(model, acc, mine, cfg.micro_batch_size, tok.pad_token_id, global_tokens)
            grad_norm = optimizer_step(acc, opt, sched, trainable, cfg.max_grad_norm)
            tokens_since += sum(len(q) + len(r) for q, r in batch)
            loss = float(acc.reduce(torch.tensor(loss_total, device=acc.device), "sum"))
            if step % cfg.log_every == 0 or step == steps:
                dt = max(time.time() - t_last, 1e-9)
                row = {"step": step, "time": time.time() - t_start, "loss": loss, "lr": sched.get_last_lr()[0],
                       "grad_norm": grad_norm, "tokens_per_s": tokens_since / dt,
                       "processes": acc.num_processes}

                if acc.is_main_process:
                    sd.metrics.append(row)
                t_last, tokens_since = time.time(), 0
            progress.update(step, {"loss": loss})
            if checkpoint_due(sd, acc, step, cfg) and step < steps:
                save_checkpoint(sd, acc, step, cfg.keep_checkpoints)
            maybe_interrupt(step)
        progress.close()
        sd.final_step = steps
        result = {}
        unwrapped = acc.unwrap_model(model)
        if acc.is_main_process:
            if cfg.data.source == "task" and cfg.eval_problems:
                result = greedy_accuracy(unwrapped, tok, task, cfg.eval_problems)
                atomic_write_json(sd.path / "eval.json", result)
                publish(sd, {"step": steps, "heldout_acc": result["heldout_acc"]})  # to TensorBoard / W&B
            models.save_final(unwrapped, tok, sd.final, {"lco_stage.json": {"stage": "sft", "init_from": init, "steps": steps}})
        acc.wait_for_everyone()
        return result


def _accumulate(model, acc, examples, micro: int, pad_id: int, global_tokens: int) -> float:
    """Forward/backward over micro-batches; returns this process's share of the summed loss."""
    total = 0.0
    chunks = [examples[i : i + micro] for i in range(0, len(examples), micro)] or [[]]
    for i, chunk in enumerate(chunks):
        if not chunk:
            continue
        ids, attn, targets = pack([q for q, _ in chunk], [r for _, r in chunk], pad_id)
        ids, attn, targets = ids.to(acc.device), attn.to(acc.device), targets.to(acc.device)
        sync = i == len(chunks) - 1
        ctx = acc.no_sync(model) if not sync else contextlib.nullcontext()
        with ctx:
            logp = token_logprobs(model, ids, attn)
            loss_sum = -(logp * targets).sum()
            # DDP averages gradients over processes: multiply back by their number.
            loss = loss_sum * acc.num_processes / global_tokens
            acc.backward(loss)
        total += loss_sum.item() / global_tokens
    return total


