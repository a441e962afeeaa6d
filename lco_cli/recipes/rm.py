"""`lco rm`: the DPO reward model φ_DPO (paper §4.2 eq. 13, §5 "Training Details").

φ_DPO starts from `rm.init_from` (default: the run's `sft` stage), which also serves, frozen, as
φ_ref. Loss: DPO's sigmoid loss −log σ(β[(log φ(y_c) − log φ_ref(y_c)) − (log φ(y_r) − log φ_ref(y_r))]).
Reference log-probabilities are computed once and cached for every epoch.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lco_cli.data.pairs import Pair, as_rows, load_file_pairs, merge_samples, pairs_from_samples, sampler_refs
from lco_cli.data.sft import TextPair, tokenize_pair
from lco_cli.engines.generation import HFEngine, encode_prompts, pack
from lco_cli.engines.scoring import sequence_logprob_sums, token_logprobs
from lco_cli.errors import ConfigError
from lco_cli.losses.dpo import dpo_loss
from lco_cli.rl.advantage_sources import RM_META
from lco_cli.runtime import models
from lco_cli.runtime.rundir import atomic_write_json, atomic_write_text
from lco_cli.runtime.trackers import publish
from lco_cli.runtime.training import (Progress, batch_indices, checkpoint_due, load_checkpoint, make_accelerator,
    make_optimizer, make_scheduler, maybe_interrupt, optimizer_step, save_checkpoint, shard, stage_run, total_steps)
from lco_cli.tasks import get_task

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.commands.common import Context


def build_pairs(ctx: Context, init_ref: str, tok) -> list[Pair]:
    """The RM's preference pairs: from a file / hub dataset, or `self`: responses to the task's prompts
    sampled from each model of `rm.pairs.sampler` (the paper samples from several), labelled by the
    task's verifier, correct × incorrect of the same prompt."""
    p, cfg = ctx.preset, ctx.preset.rm.pairs
    if cfg.source in ("file", "hub"):
        return load_file_pairs(cfg, tok, p.seed)
    task = get_task(p.task, p.seed)
    rng = random.Random(f"rm-prompts-{p.seed}")
    examples = rng.sample(task.train, min(cfg.n_prompts, len(task.train)))
    samples = [sample_and_verify(ref if ref != "init" else init_ref, ctx, task, examples) for ref in sampler_refs(cfg.sampler)]
    responses, verdicts = merge_samples(samples)
    # The pairs hold the prompt as the RM (and the policy) will see it: rendered with their tokenizer.
    prompts = [task.render(e, tok) for e in examples]
    return pairs_from_samples(prompts, responses, verdicts, max_per_prompt=cfg.max_pairs_per_prompt,
                              max_pairs=cfg.max_pairs, eval_fraction=cfg.eval_fraction, seed=p.seed)


def sample_and_verify(ref: str, ctx: Context, task, examples: list) -> tuple[list[list[str]], list[list[bool]]]:
    """`samples_per_prompt` responses of one sampler per example (prompts rendered with the sampler's own
    tokenizer: chat templates differ between model families) and the verifier's verdicts."""
    p, cfg = ctx.preset, ctx.preset.rm.pairs
    path = models.resolve_model_ref(ref, ctx.run, p)
    tok = models.load_tokenizer(path, p.model)
    sampler = models.load_model(path, p.model, trainable=False)
    if torch.cuda.is_available():
        sampler = sampler.cuda()
    torch.manual_seed(p.seed)
    roll = HFEngine(sampler, tok, batch_size=256).generate(
        encode_prompts(tok, [task.render(e, tok) for e in examples]), cfg.samples_per_prompt,
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    del sampler
    k = cfg.samples_per_prompt
    checks = task.check_batch([examples[g] for g in roll.group], roll.texts)
    responses = [roll.texts[i * k : (i + 1) * k] for i in range(len(examples))]
    verdicts = [[bool(ok) for _, ok in checks[i * k : (i + 1) * k]] for i in range(len(examples))]
    return responses, verdicts


def tokenize_pairs(tok, pairs: list[Pair], max_length: int):
    out = []
    for pr in pairs:
        pc, rc = tokenize_pair(tok, TextPair(pr.prompt, pr.chosen), max_length)
        pj, rj = tokenize_pair(tok, TextPair(pr.prompt, pr.rejected), max_length)
        out.append(((pc, rc), (pj, rj)))
    return out


def _batches(tok_pairs, micro: int, pad_id: int, device):
    """(ids, attention, targets) micro-batches; chosen rows first, then rejected rows."""
    for i in range(0, len(tok_pairs), micro):
        chunk = tok_pairs[i : i + micro]
        seqs = [c for c, _ in chunk] + [r for _, r in chunk]
        ids, attn, tgt = pack([q for q, _ in seqs], [r for _, r in seqs], pad_id)
        yield ids.to(device), attn.to(device), tgt.to(device)


def cached_ref_logps(ref_model, tok_pairs, micro, pad_id, device) -> torch.Tensor:
    """[n_pairs, 2] sequence log-probs under φ_ref (chosen, rejected), computed once."""
    sums = sequence_logprob_sums(ref_model, _batches(tok_pairs, micro, pad_id, device))
    out, pos = [], 0
    for i in range(0, len(tok_pairs), micro):
        n = len(tok_pairs[i : i + micro])
        out.append(torch.stack([sums[pos : pos + n], sums[pos + n : pos + 2 * n]], -1))
        pos += 2 * n
    return torch.cat(out) if out else torch.zeros(0, 2)


@torch.no_grad()
def evaluate_pairs(model, ref_logps, tok_pairs, micro, pad_id, device, beta) -> dict:
    """Held-out ranking: right when Σ_t[log φ_DPO − log φ_ref] of chosen exceeds rejected's."""
    if not tok_pairs:
        return {"pair_accuracy": None, "reward_margin": None, "n_pairs": 0}
    pol = cached_ref_logps(model, tok_pairs, micro, pad_id, device)
    ratio = pol - ref_logps.to(pol.device)
    diff = ratio[:, 0] - ratio[:, 1]
    return {"pair_accuracy": float((diff > 0).float().mean()), "reward_margin": float(beta * diff.mean()),
            "logratio_margin": float(diff.mean()), "ties": int((diff == 0).sum()), "n_pairs": len(tok_pairs)}


def run_rm(ctx: Context) -> dict:
    p, cfg = ctx.preset, ctx.preset.rm
    acc = make_accelerator(cfg.mixed_precision, p.seed)
    with stage_run(ctx.run, ctx.preset_name, p, "rm", acc) as sd:
        init = models.resolve_model_ref(cfg.init_from, ctx.run, p)
        tok = models.load_tokenizer(init, p.model)
        pairs_file = sd.path / "pairs.jsonl"
        if pairs_file.exists():  # resume: reuse exactly the pairs the interrupted run trained on
            pairs = [Pair(**json.loads(line)) for line in pairs_file.read_text().splitlines() if line.strip()]
        else:
            pairs = build_pairs(ctx, init, tok) if acc.is_main_process else []
            if acc.is_main_process:
                atomic_write_text(pairs_file, "".join(json.dumps(r) + "\n" for r in as_rows(pairs)))
            acc.wait_for_everyone()
            pairs = [Pair(**json.loads(line)) for line in pairs_file.read_text().splitlines() if line.strip()]
        train_pairs = tokenize_pairs(tok, [x for x in pairs if x.split == "train"], cfg.max_length)
        eval_pairs = tokenize_pairs(tok, [x for x in pairs if x.split == "eval"], cfg.max_length)
        if not train_pairs:
            raise ConfigError("rm.pairs: no training pairs (the sampler produced no prompt with both a correct and an "
                              "incorrect response; raise rm.pairs.samples_per_prompt or n_prompts)")
        ref = models.load_model(init, p.model, trainable=False).to(acc.device)
        ref_train = cached_ref_logps(ref, train_pairs, cfg.micro_batch_size, tok.pad_token_id, acc.device)
        ref_eval = cached_ref_logps(ref, eval_pairs, cfg.micro_batch_size, tok.pad_token_id, acc.device)
        del ref
        model = models.load_model(init, p.model, trainable=True)
        steps = total_steps(len(train_pairs), cfg.batch_size, cfg.epochs, cfg.max_steps)
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
        sched = make_scheduler(opt, steps, int(cfg.warmup_ratio * steps))
        model, opt, sched = acc.prepare(model, opt, sched)
        start = (load_checkpoint(sd, acc) or {"step": 0})["step"]
        if acc.is_main_process:
            sd.metrics.truncate_after(start)
        progress = Progress("rm", steps, start, enabled=acc.is_main_process, every=cfg.log_every)
        trainable = [q for q in model.parameters() if q.requires_grad]
        t0 = time.time()
        for step in range(start + 1, steps + 1):
            idx = batch_indices(step - 1, cfg.batch_size, len(train_pairs), p.seed)
            mine = shard(idx, acc.process_index, acc.num_processes)
            stats = _dpo_step(model, acc, [train_pairs[i] for i in mine], ref_train[mine], cfg, tok.pad_token_id, len(idx))
            grad_norm = optimizer_step(acc, opt, sched, trainable, cfg.max_grad_norm)
            stats = {k: float(acc.reduce(torch.tensor(v, device=acc.device), "sum")) / len(idx) for k, v in stats.items()}
            if acc.is_main_process and (step % cfg.log_every == 0 or step == steps):
                sd.metrics.append({"step": step, "time": time.time() - t0, **stats, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm})
            progress.update(step, {"loss": stats["loss"], "acc": stats["accuracy"]})
            if checkpoint_due(sd, acc, step, cfg) and step < steps:
                save_checkpoint(sd, acc, step, cfg.keep_checkpoints)
            maybe_interrupt(step)
        progress.close()
        sd.final_step = steps
        unwrapped = acc.unwrap_model(model)
        result = evaluate_pairs(unwrapped, ref_eval, eval_pairs, cfg.micro_batch_size, tok.pad_token_id, acc.device, cfg.beta)
        if acc.is_main_process:
            atomic_write_json(sd.path / "eval.json", result)
            publish(sd, {"step": steps, "heldout_pair_accuracy": result["pair_accuracy"],  # to TensorBoard / W&B
                         "heldout_reward_margin": result["reward_margin"]})
            # Absolute path plus one relative to final/, so a moved run directory still finds φ_ref.
            meta = {"reference": str(Path(init).resolve()) if Path(init).exists() else init,
                    "reference_relative": os.path.relpath(Path(init).resolve(), sd.final.resolve()) if Path(init).exists() else None,
                    "beta": cfg.beta, "init_from": cfg.init_from, "steps": steps,
                    "n_train_pairs": len(train_pairs), "n_eval_pairs": len(eval_pairs)}

            models.save_final(unwrapped, tok, sd.final, {RM_META: meta})
        acc.wait_for_everyone()
        return result


def _dpo_step(model, acc, tok_pairs, ref_logps, cfg, pad_id: int, global_pairs: int) -> dict:
    """Forward/backward over micro-batches of pairs; loss normalised by the global pair count."""
    sums = {"loss": 0.0, "accuracy": 0.0, "reward_margin": 0.0, "reward_chosen": 0.0, "reward_rejected": 0.0}
    if cfg.nll_weight > 0:
        sums["nll"] = 0.0
    micro = cfg.micro_batch_size
    n_chunks = max(1, -(-len(tok_pairs) // micro))
    for ci, batch in enumerate(_batches(tok_pairs, micro, pad_id, acc.device)):
        ids, attn, tgt = batch
        n = ids.shape[0] // 2
        ref = ref_logps[ci * micro : ci * micro + n].to(acc.device)
        sync = ci == n_chunks - 1
        with (contextlib.nullcontext() if sync else acc.no_sync(model)):
            seq = (token_logprobs(model, ids, attn) * tgt).sum(-1)
            losses, r_c, r_r = dpo_loss(seq[:n], seq[n:], ref[:, 0], ref[:, 1], cfg.beta)
            if cfg.nll_weight > 0:  # RPO (Pang et al. 2024): + α · per-token NLL of the chosen response
                nll = -seq[:n] / tgt[:n].sum(-1).clamp(min=1)
                losses = losses + cfg.nll_weight * nll
                sums["nll"] += float(nll.detach().sum())
            acc.backward(losses.sum() * acc.num_processes / global_pairs)
        sums["loss"] += float(losses.detach().sum())
        sums["accuracy"] += float((r_c > r_r).float().sum())
        sums["reward_margin"] += float((r_c - r_r).sum())
        sums["reward_chosen"] += float(r_c.sum())
        sums["reward_rejected"] += float(r_r.sum())
    return sums


