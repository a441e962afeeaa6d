"""`lco train`: policy optimisation on fresh rollouts — LCO and the baselines in one loop.

Per step: sample `batch_size` prompts × `samples_per_prompt` responses from the current policy,
score them (verifier and/or the DPO RM), let the algorithm's `Update` precompute its frozen
quantities, then take `update_epochs` × `minibatches` optimizer steps. Telemetry per DESIGN §3.
"""
from __future__ import annotations

import contextlib
import math
import time

import click
import torch

from .. import models
from ..algorithms import HiddenStatesLM, TrainEnv, make_update, needs_reward_model, token_slice
from ..errors import ConfigError, StageFailedError
from ..generation import encode_prompts, make_engine
from ..reward import DPOReward
from ..rollout import RolloutBatch, from_rollouts
from ..tasks import get_task, greedy_accuracy
from ..training import (Progress, batch_indices, grad_norm_of, load_checkpoint, make_accelerator, make_optimizer,
                        make_scheduler, maybe_interrupt, save_checkpoint, shard, stage_run, write_json)
from .common import Context, resolve, stage_options


class PhiAdvantage:
    """advantage=logprob with `train.advantage_model`: A = log φ(·|s) from that model (eq. 12)."""

    def __init__(self, ref: str, model_cfg, device):
        self.model = models.load_model(ref, model_cfg, trainable=False).to(device)
        self.tokenizer = models.load_tokenizer(ref, model_cfg)

    @torch.no_grad()
    def hidden_states(self, input_ids, attention_mask):
        h, head = models.final_hidden_and_head(self.model, input_ids, attention_mask)
        out = (h, head.weight, getattr(head, "bias", None))
        return [out, out]


def load_reward(ctx: Context, tok, device):
    """The DPO RM (and its φ_ref) when the algorithm needs one; checks the shared vocabulary."""
    p, cfg = ctx.preset, ctx.preset.train
    reward = adv_source = None
    if needs_reward_model(cfg) and not (cfg.algo == "lco" and cfg.advantage == "logprob" and cfg.advantage_model and cfg.reward != "rm"):
        rm_dir = models.resolve_model_ref("rm", ctx.run, p)
        reward = DPOReward(rm_dir, p.model, device)
        models.check_same_vocab(tok, reward.tokenizer, cfg.init_from, rm_dir)
    if cfg.algo == "lco" and cfg.advantage == "logprob" and cfg.advantage_model:
        phi = PhiAdvantage(models.resolve_model_ref(cfg.advantage_model, ctx.run, p), p.model, device)
        models.check_same_vocab(tok, phi.tokenizer, cfg.init_from, cfg.advantage_model)
        adv_source = phi
    return reward, adv_source or reward


def score(batch: RolloutBatch, cfg, reward, texts, examples, task) -> None:
    """Sequence rewards: verifier ±1 (paper Table 5) or the DPO implicit reward Σ_t log-ratio."""
    if cfg.reward == "verifier":
        batch.rewards = batch.correct * 2 - 1
    else:
        batch.rewards = reward.sequence_rewards(batch.input_ids, batch.attention_mask, batch.targets).float().cpu()


def sequence_advantages(rewards: torch.Tensor, group: torch.Tensor, norm: str, acc) -> torch.Tensor:
    """Normalised sequence advantages for `sparse` LCO: none, batch (global mean/std), or group."""
    if norm == "none":
        return rewards.clone()
    if norm == "batch":
        allr = acc.gather(rewards.to(acc.device)).cpu() if acc.num_processes > 1 else rewards
        return (rewards - allr.mean()) / (allr.std() + 1e-4) if allr.numel() > 1 else rewards - allr.mean()
    adv = torch.zeros_like(rewards)
    for g in group.unique():
        idx = group == g
        r = rewards[idx]
        adv[idx] = (r - r.mean()) / (r.std() + 1e-4) if r.numel() > 1 else r - r.mean()
    return adv


def run_train(ctx: Context) -> dict:
    p, cfg = ctx.preset, ctx.preset.train
    acc = make_accelerator(cfg.mixed_precision, p.seed)
    with stage_run(ctx.run, ctx.preset_name, p, "train", acc) as sd:
        init = models.resolve_model_ref(cfg.init_from, ctx.run, p)
        tok = models.load_tokenizer(init, p.model)
        task = get_task(p.task, p.seed)
        reward, adv_source = load_reward(ctx, tok, acc.device)
        policy = HiddenStatesLM(models.load_model(init, p.model, trainable=True))
        reference = HiddenStatesLM(models.load_model(init, p.model, trainable=False)).to(acc.device)
        opt_steps = cfg.steps * cfg.update_epochs * cfg.minibatches
        opt = make_optimizer(policy, cfg.lr, cfg.weight_decay)
        sched = make_scheduler(opt, opt_steps, cfg.warmup_steps, kind="constant")
        policy, opt, sched = acc.prepare(policy, opt, sched)
        env = TrainEnv(cfg, policy, reference, adv_source, acc, cfg.loss_chunk_size)
        update = make_update(cfg, env)
        state = load_checkpoint(sd, acc) or {"step": 0}
        start, skipped_total = state["step"], state.get("skipped_steps", 0)
        if acc.is_main_process:
            sd.metrics.truncate_after(start)
        engine = make_engine(cfg.rollout.engine, acc.unwrap_model(policy).lm, tok, cfg.rollout.batch_size)
        trainable = [q for q in policy.parameters() if q.requires_grad]
        progress = Progress("train", cfg.steps, start, enabled=acc.is_main_process, every=max(1, cfg.log_every))
        consecutive_skips = 0
        result: dict = {}
        if start == 0 and cfg.eval_every and task is not None:
            result = _heldout(acc, policy, tok, task, cfg)
            if acc.is_main_process:
                sd.metrics.append({"step": 0, "time": 0.0, **result})
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.time()
            idx = batch_indices(step - 1, cfg.batch_size, len(task.train), p.seed)
            examples = [task.train[i] for i in shard(idx, acc.process_index, acc.num_processes)]
            # Seed per (step, rank): a resumed run samples exactly what the uninterrupted one did.
            torch.manual_seed(p.seed * 1_000_003 + step * 131 + acc.process_index)
            engine.sync_weights(acc.unwrap_model(policy).lm)
            roll = engine.generate(encode_prompts(tok, [e.prompt for e in examples]), cfg.samples_per_prompt,
                                   temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                   max_new_tokens=cfg.rollout.max_new_tokens)
            t_gen = time.time() - t0
            correct = [task.check(examples[g], text)[1] for g, text in zip(roll.group, roll.texts)]
            batch = from_rollouts(roll, tok.pad_token_id, correct).to(acc.device)
            score(batch, cfg, reward, roll.texts, examples, task)
            batch.rewards = batch.rewards.to(acc.device)
            if cfg.algo == "lco" and cfg.advantage == "sparse":
                batch.extras["seq_adv"] = sequence_advantages(batch.rewards.cpu(), batch.group.cpu(), cfg.advantage_norm, acc).to(acc.device)
            stats = update.prepare(batch)
            row, skipped = _optimize(update, batch, cfg, acc, opt, sched, trainable, step)
            consecutive_skips = consecutive_skips + 1 if skipped else 0
            skipped_total += int(skipped)
            if consecutive_skips >= cfg.max_skipped:
                raise StageFailedError(f"train: {consecutive_skips} consecutive non-finite steps (loss or gradient); "
                                       f"stopped at step {step}, last checkpoint kept in {sd.checkpoints_dir}")
            tokens = float(acc.reduce(batch.response_len.sum().float(), "sum"))
            row.update(stats)
            row.update(_batch_stats(batch, acc))
            row.update({"step": step, "time": time.time() - t0, "rollout_time": t_gen, "lr": sched.get_last_lr()[0],
                        "tokens_per_s": tokens / max(time.time() - t0, 1e-9), "skipped_steps": skipped_total})
            if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.steps:
                result = _heldout(acc, policy, tok, task, cfg)
                row.update(result)
            if acc.is_main_process and (step % cfg.log_every == 0 or step == cfg.steps or "heldout_acc" in row):
                sd.metrics.append(row)
            progress.update(step, {k: row[k] for k in ("loss", "reward_mean", "heldout_acc") if k in row})
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save_checkpoint(sd, acc, step, cfg.keep_checkpoints, {"skipped_steps": skipped_total})
            maybe_interrupt(step)
        progress.close()
        sd.final_step = cfg.steps
        if acc.is_main_process:
            write_json(sd.path / "eval.json", result)
            models.save_final(acc.unwrap_model(policy).lm, tok, sd.final,
                              {"lco_stage.json": {"stage": "train", "init_from": init, "algo": cfg.algo, "steps": cfg.steps}})
        acc.wait_for_everyone()
        return result


def _optimize(update, batch, cfg, acc, opt, sched, trainable, step) -> tuple[dict, bool]:
    """update_epochs × minibatches optimizer steps on one rollout batch; returns metrics, skipped?"""
    telemetry = cfg.telemetry.split_grad_norm and step % cfg.telemetry.every == 0
    perm = torch.randperm(batch.size, generator=torch.Generator().manual_seed(step)).tolist() if cfg.minibatches > 1 else None
    sums: dict[str, float] = {}
    skipped = False
    for _ in range(cfg.update_epochs):
        for mb_rows in _minibatch_rows(batch, cfg.minibatches, perm):
            batch.extras["global_tokens"] = float(acc.reduce(batch.response_len[mb_rows].sum().float(), "sum"))
            batch.extras["global_seqs"] = float(acc.reduce(torch.tensor(float(len(mb_rows)), device=acc.device), "sum"))
            if telemetry:
                out = _split_backward(update, batch, mb_rows, cfg, acc, trainable)
            else:
                out = _backward(update, batch, mb_rows, cfg, acc, "all", stats=True)
            loss = out.pop("loss")
            grad_norm = grad_norm_of(trainable) if not telemetry else out["grad_norm"]
            out["grad_norm"] = grad_norm
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                opt.zero_grad(set_to_none=True)
                skipped = True
                continue
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            for k, v in {"loss": loss, **out}.items():
                sums[k] = sums.get(k, 0.0) + v
    n = max(cfg.update_epochs * cfg.minibatches, 1)
    return {k: v / n for k, v in sums.items()} if sums else {"loss": float("nan"), "grad_norm": float("nan")}, skipped


def _minibatch_rows(batch, minibatches: int, perm) -> list[list[int]]:
    """Minibatches of whole sequences; rows sorted so micro-batches stay contiguous token ranges."""
    if minibatches <= 1:
        return [list(range(batch.size))]
    size = math.ceil(batch.size / minibatches)
    return [sorted(perm[i : i + size]) for i in range(0, batch.size, size)]


def _backward(update, batch, rows, cfg, acc, part: str, stats: bool = False) -> dict:
    """Forward/backward over contiguous micro-batches of `rows`; no DDP sync until the last."""
    micro = cfg.micro_batch_size
    groups = _contiguous(rows, micro)
    total, agg, weight = 0.0, {}, 0.0
    for i, mrows in enumerate(groups):
        last = i == len(groups) - 1
        with (contextlib.nullcontext() if last else acc.no_sync(update.env.policy)):
            loss, st = update.micro_loss(batch, mrows, part=part, stats=stats)
            acc.backward(loss)
        total += float(loss.detach())
        n_tok = float(batch.response_len[mrows].sum())
        for k, v in st.items():
            agg[k] = agg.get(k, 0.0) + v * n_tok
        weight += n_tok
    loss_value = float(acc.reduce(torch.tensor(total, device=acc.device), "sum")) / acc.num_processes
    out = {k: v / max(weight, 1.0) for k, v in agg.items() if k.startswith(("logit_grad", "clip", "ratio", "value", "approx", "explained", "kl_", "dropped"))}
    return {"loss": loss_value, **out}


def _contiguous(rows: list[int], micro: int) -> list[list[int]]:
    """Split sorted rows into runs that are contiguous and at most `micro` long."""
    runs, cur = [], []
    for r in rows:
        if cur and (r != cur[-1] + 1 or len(cur) == micro):
            runs.append(cur)
            cur = []
        cur.append(r)
    return runs + ([cur] if cur else [])


def _split_backward(update, batch, rows, cfg, acc, trainable) -> dict:
    """Paper Figs. 4–6: gradient norm from positive- vs negative-advantage tokens (second backward)."""
    pos = _backward(update, batch, rows, cfg, acc, "pos", stats=True)
    g_pos = [q.grad.detach().clone() if q.grad is not None else None for q in trainable]
    norm_pos = grad_norm_of(trainable)
    neg = _backward(update, batch, rows, cfg, acc, "neg", stats=True)
    norm_all = grad_norm_of(trainable)
    diffs = [(q.grad - g).float().norm() for q, g in zip(trainable, g_pos) if q.grad is not None and g is not None]
    norm_neg = float(torch.linalg.vector_norm(torch.stack(diffs))) if diffs else 0.0
    out = {"loss": pos["loss"] + neg["loss"], "grad_norm": norm_all, "grad_norm_pos": norm_pos, "grad_norm_neg": norm_neg}
    for name, part in (("pos", pos), ("neg", neg)):
        for k in ("logit_grad_sampled", "logit_grad_other"):
            if k in part:
                out[f"{k}_{name}"] = part[k]
    if "logit_grad_sampled" in pos and "logit_grad_sampled" in neg:
        fpos = float((batch.extras.get("adv_sampled", torch.ones(1)) >= 0).float().mean())
        for k in ("logit_grad_sampled", "logit_grad_other"):
            out[k] = fpos * pos[k] + (1 - fpos) * neg[k]
    return out


def _batch_stats(batch: RolloutBatch, acc) -> dict:
    def mean(x):
        return float(acc.reduce(x.float().sum(), "sum") / acc.reduce(torch.tensor(float(x.numel()), device=x.device), "sum"))

    r = acc.gather(batch.rewards.float()) if acc.num_processes > 1 else batch.rewards.float()
    return {"reward_mean": float(r.mean()), "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
            "accuracy": mean(batch.correct), "response_len": mean(batch.response_len), "truncated_frac": mean(batch.truncated)}


def _heldout(acc, policy, tok, task, cfg) -> dict:
    out = {}
    if acc.is_main_process and cfg.eval_problems:
        out = greedy_accuracy(acc.unwrap_model(policy).lm, tok, task, cfg.eval_problems,
                              max_new_tokens=cfg.rollout.max_new_tokens)
        out = {"heldout_acc": out["heldout_acc"]}
    acc.wait_for_everyone()
    return out


@click.command(help="Policy training (LCO or a baseline) into RUN_DIR/train/.")
@stage_options
def command(args, run_dir):
    ctx = resolve(args, run_dir)
    result = run_train(ctx)
    if result.get("heldout_acc") is not None:
        click.echo(f"train: held-out greedy accuracy {result['heldout_acc']:.3f}")
    click.echo(f"train: done -> {ctx.run.stage('train').final}")
