"""The train stage: policy optimisation on fresh rollouts — LCO and the baselines in one loop.

Per step: sample `batch_size` prompts × `samples_per_prompt` responses from the current policy,
score them (verifier and/or the DPO RM), let the algorithm's `Update` freeze its inputs in `prepare`
(a typed `Prepared`), then take `update_epochs` × `minibatches` optimizer steps on that batch.
Telemetry: the `train/metrics.jsonl` contract in docs/architecture.md.

Only the objective differs between algorithms; the hooks of `rl.update.Update` cover what else a
baseline needs (`collect` through `rl.sampling.Sampler`, `aux_step` for PPO's value optimizer).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING

import torch

from lco_cli.engines import sharding
from lco_cli.engines.generation import make_engine
from lco_cli.errors import StageFailedError
from lco_cli.rl.advantage_sources import load_advantage_sources
from lco_cli.rl.registry import get_algo, update_class
from lco_cli.rl.rollout import RolloutBatch
from lco_cli.rl.sampling import Sampler
from lco_cli.rl.stability import GapHistory, GradientGapProbe
from lco_cli.rl.update import HiddenStatesLM, MicroBatch, Normaliser, TrainEnv
from lco_cli.runtime import models
from lco_cli.runtime.guard import CollapseError, CollapseGuard
from lco_cli.runtime.rundir import atomic_write_json
from lco_cli.runtime.training import (Progress, batch_indices, check_finite_parameters, checkpoint_due, grad_norm_of,
    load_checkpoint, make_accelerator, make_optimizer, make_scheduler, maybe_interrupt, save_checkpoint, shard,
    stage_run)
from lco_cli.runtime.rundir import MetricsLog
from lco_cli.tasks import get_task, greedy_accuracy
from lco_cli.tasks.rewards import is_reward_ref, load_reward_fn
from lco_cli.tasks.vocab import usable_vocab

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.commands.common import Context


def run_train(ctx: Context) -> dict:
    p = ctx.preset
    cfg = get_algo(p.train.algo).resolve(p.train)  # null samples_per_prompt / update_epochs / minibatches
    acc = make_accelerator(cfg.mixed_precision, p.seed)
    task = get_task(p.task, p.seed)  # bad task data fails here, before the stage folder is touched
    reward_fn = load_reward_fn(cfg.reward) if is_reward_ref(cfg.reward) else None
    with stage_run(ctx.run, ctx.preset_name, p, "train", acc) as sd:
        init = models.resolve_model_ref(cfg.init_from, ctx.run, p)
        tok = models.load_tokenizer(init, p.model)
        reward, adv_source = load_advantage_sources(p, ctx.run, cfg, tok, acc.device)
        policy = sharding.ready_for_fsdp(HiddenStatesLM(models.load_model(init, p.model, trainable=True)), cfg)
        reference = None  # nothing reads π_ref: no copy in memory, no forward (train.telemetry.kl_ref: false)
        if get_algo(cfg.algo).needs_reference(cfg):
            # With LoRA the reference is the policy with its adapters disabled, not a second copy.
            reference = models.reference_for(policy) or HiddenStatesLM(models.load_model(init, p.model, trainable=False)).to(acc.device)
        opt_steps = cfg.steps * cfg.update_epochs * cfg.minibatches
        opt = make_optimizer(policy, cfg.lr, cfg.weight_decay)
        sched = make_scheduler(opt, opt_steps, cfg.warmup_steps, kind="constant")
        policy, opt, sched = acc.prepare(policy, opt, sched)
        env = TrainEnv(cfg, policy, reference, adv_source, acc, cfg.loss_chunk_size, init_from=init, model_cfg=p.model,
                       vocab=usable_vocab(tok))
        update = update_class(cfg.algo)(cfg, env)
        state = load_checkpoint(sd, acc) or {"step": 0}
        start, skipped_total = state["step"], state.get("skipped_steps", 0)
        rollout_log = MetricsLog(sd.path / "rollouts.jsonl")
        if acc.is_main_process:
            sd.metrics.truncate_after(start)
            rollout_log.truncate_after(start)
        engine = make_engine(cfg.rollout.engine, acc.unwrap_model(policy).lm, tok, cfg.rollout.batch_size, p.model.vllm)
        sampler = Sampler(cfg, engine, policy, tok, task, reward, acc, p.seed, reward_fn=reward_fn)
        samples_total = state.get("rollout_samples", 0)
        trainable = [q for q in policy.parameters() if q.requires_grad]
        progress = Progress("train", cfg.steps, start, enabled=acc.is_main_process, every=max(1, cfg.log_every))
        probe = None
        if cfg.telemetry.gradient_gap:
            has_verifier = task is not None and task.has_verifier  # else verdicts are the sign of the reward
            probe = GradientGapProbe(env, trainable, has_verifier, GapHistory(state.get("gap_M", 0.0), state.get("gap_J0")),
                                     sharded=sharding.is_sharded(acc.unwrap_model(policy)))
        guard = CollapseGuard(cfg.guard, usable_vocab(tok), state.get("heldout_acc0"), _heldout_n(task, cfg))
        consecutive_skips = 0
        result: dict = {}
        if start == 0 and cfg.eval_every and task is not None:
            result = _heldout(acc, policy, tok, task, cfg)
            guard.set_heldout0(result.get("heldout_acc"), _heldout_n(task, cfg))
            if acc.is_main_process:
                sd.metrics.append({"step": 0, "time": 0.0, **result})
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.time()
            idx = batch_indices(step - 1, cfg.batch_size, len(task.train), p.seed)
            examples = [task.train[i] for i in shard(idx, acc.process_index, acc.num_processes)]
            # Seed per (step, rank): a resumed run samples exactly what the uninterrupted one did.
            torch.manual_seed(p.seed * 1_000_003 + step * 131 + acc.process_index)
            sampler.start_step()
            batch, collect_stats = update.collect(sampler, step, examples)
            t_gen = time.time() - t0
            n_samples = float(acc.reduce(torch.tensor(float(sampler.samples), device=acc.device), "sum"))
            samples_total += int(n_samples)
            if batch is None:  # nothing to learn from this step (DAPO: every group had equal rewards)
                stats, row, skipped = {}, {"loss": float("nan"), "grad_norm": float("nan"), "update_skipped": 1}, False
                batch = collect_stats.pop("log_batch")
            else:
                batch = _shuffle_for_minibatches(batch, cfg, step)
                measure = probe is not None and step % cfg.telemetry.gradient_gap == 0
                if measure:  # g+ and g- at θ_k, before `prepare` and the update
                    probe.before_update(batch)
                prep, stats = update.prepare(batch)
                row, skipped = _optimize(update, batch, prep, cfg, acc, opt, sched, trainable, step)
                stats = {**update.forward_stats(prep), **stats}  # behaviour telemetry of a single-pass batch
                check_finite_parameters(trainable, step)
                if measure:  # the update taken on the whole batch (every epoch and minibatch)
                    stats.update(probe.after_update())
            collect_stats.pop("log_batch", None)
            row.update(collect_stats)
            row.update({"rollout_samples": n_samples, "rollout_samples_total": samples_total})
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
            logged = step % cfg.log_every == 0 or step == cfg.steps or "heldout_acc" in row
            symptom = guard.check(row)
            if acc.is_main_process and (logged or symptom):
                sd.metrics.append(row)
            if logged:
                _log_rollouts(rollout_log, sampler.records, step, cfg.log_rollouts, acc)
            progress.update(step, {k: row[k] for k in ("loss", "reward_mean", "heldout_acc") if k in row})
            if _any_process(acc, symptom is not None):  # held-out accuracy is known on the main process only
                gauge = probe.last_gauge if probe is not None else None
                raise CollapseError(guard.message(step, symptom or "seen on the main process", sd.checkpoints_dir, gauge))
            if checkpoint_due(sd, acc, step, cfg) and step < cfg.steps:
                extras = {"skipped_steps": skipped_total, "rollout_samples": samples_total, "heldout_acc0": guard.heldout0}
                if probe is not None:
                    extras.update({"gap_M": probe.history.M, "gap_J0": probe.history.J0})
                save_checkpoint(sd, acc, step, cfg.keep_checkpoints, extras)
            maybe_interrupt(step)
        progress.close()
        sd.final_step = cfg.steps
        full_state = sharding.gather_state_for_save(acc, policy)  # collective under FSDP, None otherwise
        if acc.is_main_process:
            atomic_write_json(sd.path / "eval.json", result)
            models.save_final(acc.unwrap_model(policy).lm, tok, sd.final,
                              {"lco_stage.json": {"stage": "train", "init_from": init, "algo": cfg.algo, "steps": cfg.steps}},
                              state_dict=full_state)
        acc.wait_for_everyone()
        return result


def _optimize(update, batch, prep, cfg, acc, opt, sched, trainable, step) -> tuple[dict, bool]:
    """update_epochs × minibatches optimizer steps on one rollout batch; returns metrics, skipped?

    The row holds the means over those steps, plus `loss_first`/`loss_last` and `grad_norm_first`/
    `grad_norm_last`: with a frozen z_old the LCO losses descend toward a fixed target within one
    rollout batch (Props. 4.7–4.9), and these show it."""
    telemetry = cfg.telemetry.split_grad_norm and step % cfg.telemetry.every == 0
    sums: dict[str, float] = {}
    trace: list[tuple[float, float]] = []
    skipped = False
    for _ in range(cfg.update_epochs):
        for mb_rows in _minibatch_rows(batch, cfg.minibatches):
            norm = Normaliser(global_tokens=float(acc.reduce(batch.response_len[mb_rows].sum().float(), "sum")),
                              global_seqs=float(acc.reduce(torch.tensor(float(len(mb_rows)), device=acc.device), "sum")),
                              world=acc.num_processes)
            if telemetry:
                out = _split_backward(update, batch, prep, mb_rows, norm, cfg, acc, trainable)
            else:
                out = _backward(update, batch, prep, mb_rows, norm, cfg, acc, "all", stats=True)
            loss = out.pop("loss")
            grad_norm = grad_norm_of(trainable) if not telemetry else out["grad_norm"]
            out["grad_norm"] = grad_norm
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                opt.zero_grad(set_to_none=True)
                update.aux_zero_grad()
                skipped = True
                continue
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            out.update(update.aux_step())
            trace.append((loss, grad_norm))
            for k, v in {"loss": loss, **out}.items():
                sums[k] = sums.get(k, 0.0) + v
    n = max(cfg.update_epochs * cfg.minibatches, 1)
    row = {k: v / n for k, v in sums.items()} if sums else {"loss": float("nan"), "grad_norm": float("nan")}
    if len(trace) > 1:
        row.update({"loss_first": trace[0][0], "loss_last": trace[-1][0],
                    "grad_norm_first": trace[0][1], "grad_norm_last": trace[-1][1]})
    return row, skipped


def _shuffle_for_minibatches(batch: RolloutBatch, cfg, step: int) -> RolloutBatch:
    """With several minibatches, put the rows in a random order (seeded by the step) once, before
    `prepare`: minibatch i is then the contiguous range i of the shuffled batch, i.e. the same
    random partition in every epoch, and its micro-batches are contiguous token ranges (full-size
    micro-batches rather than the short runs a scattered row subset would split into). Groups of a
    prompt's samples are no longer adjacent afterwards; `batch.group` says which rows belong together."""
    if cfg.minibatches <= 1:
        return batch
    perm = torch.randperm(batch.size, generator=torch.Generator().manual_seed(step))
    return batch.subset(perm.to(batch.input_ids.device))


def _minibatch_rows(batch, minibatches: int) -> list[list[int]]:
    """Minibatches of whole sequences: contiguous row ranges of the (already shuffled) batch."""
    if minibatches <= 1:
        return [list(range(batch.size))]
    size = math.ceil(batch.size / minibatches)
    return [list(range(i, min(i + size, batch.size))) for i in range(0, batch.size, size)]


def _backward(update, batch, prep, rows, norm: Normaliser, cfg, acc, part: str, stats: bool = False) -> dict:
    """Forward/backward over contiguous micro-batches of `rows`; no DDP sync until the last."""
    micro = cfg.micro_batch_size
    groups = _contiguous(rows, micro)
    total, agg, weight, extreme = 0.0, {}, {}, {}
    for i, mrows in enumerate(groups):
        last = i == len(groups) - 1
        with (contextlib.nullcontext() if last else acc.no_sync(update.env.policy)):
            view = MicroBatch.of(batch, mrows)
            loss, st = update.micro_loss(batch, view, prep.take(view), norm, part=part, stats=stats)
            acc.backward(loss)
        total += float(loss.detach())
        n_tok = float(batch.response_len[mrows].sum())
        for k, v in st.items():
            if not update.diagnostic(k):
                continue
            if k.endswith(("_min", "_max")):  # extremes stay extremes across micro-batches
                pick = min if k.endswith("_min") else max
                extreme[k] = pick(extreme[k], v) if k in extreme else v
            else:
                agg[k] = agg.get(k, 0.0) + v * n_tok
                weight[k] = weight.get(k, 0.0) + n_tok
    loss_value = float(acc.reduce(torch.tensor(total, device=acc.device), "sum")) / acc.num_processes
    out = {k: v / max(weight[k], 1.0) for k, v in agg.items()}
    return {"loss": loss_value, **out, **extreme}


def _contiguous(rows: list[int], micro: int) -> list[list[int]]:
    """Split sorted rows into runs that are contiguous and at most `micro` long."""
    runs, cur = [], []
    for r in rows:
        if cur and (r != cur[-1] + 1 or len(cur) == micro):
            runs.append(cur)
            cur = []
        cur.append(r)
    return runs + ([cur] if cur else [])


def _split_backward(update, batch, prep, rows, norm: Normaliser, cfg, acc, trainable) -> dict:
    """Paper Figs. 4–6: gradient norm from positive- vs negative-advantage tokens (second backward)."""
    pos = _backward(update, batch, prep, rows, norm, cfg, acc, "pos", stats=True)
    g_pos = [q.grad.detach().clone() if q.grad is not None else None for q in trainable]
    norm_pos = grad_norm_of(trainable)
    neg = _backward(update, batch, prep, rows, norm, cfg, acc, "neg", stats=True)
    norm_all = grad_norm_of(trainable)
    diffs = [(q.grad - g).float().norm() for q, g in zip(trainable, g_pos) if q.grad is not None and g is not None]
    norm_neg = float(torch.linalg.vector_norm(torch.stack(diffs))) if diffs else 0.0
    out = {"loss": pos["loss"] + neg["loss"], "grad_norm": norm_all, "grad_norm_pos": norm_pos, "grad_norm_neg": norm_neg}
    for name, part in (("pos", pos), ("neg", neg)):
        for k in ("logit_grad_sampled", "logit_grad_other"):
            if k in part:
                out[f"{k}_{name}"] = part[k]
    for k, v in pos.items():  # other diagnostics are whole-batch values in every part (see Update.micro_loss)
        if k not in out and k != "loss" and not k.startswith("logit_grad"):
            out[k] = v
    if "logit_grad_sampled" in pos and "logit_grad_sampled" in neg:
        fpos = float((prep.adv_sampled >= 0).float().mean())
        for k in ("logit_grad_sampled", "logit_grad_other"):
            out[k] = fpos * pos[k] + (1 - fpos) * neg[k]
    return out


def _batch_stats(batch: RolloutBatch, acc) -> dict:
    def mean(x):
        return float(acc.reduce(x.float().sum(), "sum") / acc.reduce(torch.tensor(float(x.numel()), device=x.device), "sum"))

    r = acc.gather(batch.rewards.float()) if acc.num_processes > 1 else batch.rewards.float()
    return {"reward_mean": float(r.mean()), "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
            "accuracy": mean(batch.correct), "response_len": mean(batch.response_len), "truncated_frac": mean(batch.truncated)}


def _log_rollouts(log: MetricsLog, records: list, step: int, limit: int | None, acc) -> None:
    """The step's rollouts (every process's, in rank order) to `train/rollouts.jsonl`: the first
    `train.log_rollouts` of them (None = all, 0 = none)."""
    if limit == 0:
        return
    rows = [r.row(step) for r in records]
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    if acc.is_main_process:
        for row in rows[:limit] if limit is not None else rows:
            log.append(row)


def _any_process(acc, flag: bool) -> bool:
    """True on every process when `flag` is true on any (a collective: every process must stop together)."""
    if acc.num_processes == 1:
        return flag
    return float(acc.reduce(torch.tensor(float(flag), device=acc.device), "sum")) > 0


def _heldout_n(task, cfg) -> int:
    return min(cfg.eval_problems, len(task.test)) if task is not None and task.has_verifier else 0


def _heldout(acc, policy, tok, task, cfg) -> dict:
    out = {}
    if acc.is_main_process and cfg.eval_problems:
        out = greedy_accuracy(acc.unwrap_model(policy).lm, tok, task, cfg.eval_problems,
                              max_new_tokens=cfg.rollout.max_new_tokens)
        out = {"heldout_acc": out["heldout_acc"]}
    acc.wait_for_everyone()
    return out
