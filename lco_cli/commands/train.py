"""`lco train`: policy optimisation on fresh rollouts — LCO and the baselines in one loop.

Per step: sample `batch_size` prompts × `samples_per_prompt` responses from the current policy,
score them (verifier and/or the DPO RM), let the algorithm's `Update` precompute its frozen
quantities, then take `update_epochs` × `minibatches` optimizer steps. Telemetry per DESIGN §3.

Only the objective differs between algorithms; the hooks of `algorithms.Update` cover what else
a baseline needs: `collect` (DAPO's dynamic-sampling refill, GKD's dataset responses, MiniLLM's
teacher-mixed sampling) through the `Sampler` below, and `aux_step` (PPO's value optimizer).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import click
import torch

from lco_cli.runtime import models
from lco_cli.rl.update import HiddenStatesLM, TrainEnv, make_update, needs_reward_model
from lco_cli.errors import StageFailedError
from lco_cli.engines.generation import Rollouts, encode_prompts, make_engine
from lco_cli.rl.reward import DPOReward
from lco_cli.rl.rollout import RolloutBatch, from_rollouts
from lco_cli.tasks import get_task, greedy_accuracy
from lco_cli.runtime.training import (Progress, batch_indices, check_finite_parameters, checkpoint_due, grad_norm_of,
                        load_checkpoint, make_accelerator, make_optimizer, make_scheduler, maybe_interrupt, save_checkpoint,
                        shard, stage_run, write_json)
from lco_cli.commands.common import Context, resolve, stage_options


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


@dataclass
class Scored:
    """Scored rollouts of one sampling round, before packing: `examples[g]` is group g's problem."""

    examples: list
    roll: Rollouts
    correct: list[bool]
    rewards: torch.Tensor  # [n] on the CPU

    def __len__(self) -> int:
        return len(self.roll)

    def groups(self) -> list[list[int]]:
        """Row indices of each group, in group order."""
        out: list[list[int]] = [[] for _ in self.examples]
        for i, g in enumerate(self.roll.group):
            out[g].append(i)
        return out

    def select_groups(self, keep: list[int]) -> Scored:
        """The groups `keep` (in that order), renumbered 0..len(keep)-1."""
        rows_of = self.groups()
        rows = [i for g in keep for i in rows_of[g]]
        new_g = {g: k for k, g in enumerate(keep)}
        r = self.roll
        roll = Rollouts([r.prompt_ids[i] for i in rows], [r.response_ids[i] for i in rows], [r.texts[i] for i in rows],
                        [r.truncated[i] for i in rows], [new_g[r.group[i]] for i in rows])
        return Scored([self.examples[g] for g in keep], roll, [self.correct[i] for i in rows], self.rewards[rows])

    @staticmethod
    def concat(parts: list[Scored]) -> Scored:
        roll, examples, correct, offset = Rollouts([], [], [], [], []), [], [], 0
        for p in parts:
            roll.prompt_ids += p.roll.prompt_ids
            roll.response_ids += p.roll.response_ids
            roll.texts += p.roll.texts
            roll.truncated += p.roll.truncated
            roll.group += [g + offset for g in p.roll.group]
            examples += p.examples
            correct += p.correct
            offset += len(p.examples)
        return Scored(examples, roll, correct, torch.cat([p.rewards for p in parts]) if parts else torch.zeros(0))


class Sampler:
    """What `Update.collect` uses to get scored rollout batches (one per process)."""

    def __init__(self, cfg, engine, policy, tok, task, reward, acc, seed: int):
        self.cfg, self.engine, self.policy, self.tok, self.task = cfg, engine, policy, tok, task
        self.reward, self.acc, self.seed = reward, acc, seed
        self.samples = 0  # responses sampled on this process in the current step

    def generate(self, examples: list, n: int, **gen_kwargs) -> Scored:
        """`n` on-policy responses per problem (extra kwargs go to `engine.generate`), scored."""
        cfg = self.cfg
        self.engine.sync_weights(self.acc.unwrap_model(self.policy).lm)
        roll = self.engine.generate(encode_prompts(self.tok, [e.prompt for e in examples]), n,
                                    temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                    max_new_tokens=cfg.rollout.max_new_tokens, **gen_kwargs)
        self.samples += len(roll)
        return self._score(examples, roll)

    def dataset(self, examples: list) -> Scored:
        """The task's ground-truth answers as responses (answer + EOS), one per problem."""
        tok = self.tok
        prompts = encode_prompts(tok, [e.prompt for e in examples])
        responses = [tok(e.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for e in examples]
        roll = Rollouts(prompts, responses, [e.answer for e in examples], [False] * len(examples), list(range(len(examples))))
        return self._score(examples, roll)

    def _score(self, examples: list, roll: Rollouts) -> Scored:
        correct = [self.task.check(examples[g], text)[1] for g, text in zip(roll.group, roll.texts)]
        batch = from_rollouts(roll, self.tok.pad_token_id, correct).to(self.acc.device)
        score(batch, self.cfg, self.reward, roll.texts, examples, self.task)
        return Scored(list(examples), roll, correct, batch.rewards.float().cpu())

    def pack(self, scored: Scored) -> RolloutBatch:
        batch = from_rollouts(scored.roll, self.tok.pad_token_id, scored.correct).to(self.acc.device)
        batch.rewards = scored.rewards.to(self.acc.device)
        return batch

    def sample(self, examples: list, n: int, **gen_kwargs) -> RolloutBatch:
        """Generate, score and pack in one go (the default `collect`)."""
        return self.pack(self.generate(examples, n, **gen_kwargs))

    def extra_examples(self, step: int, round_: int, k: int) -> list:
        """`k` more training problems for this process (DAPO refill), seeded by (seed, step, round, rank)."""
        import random

        rng = random.Random(f"refill-{self.seed}-{step}-{round_}-{self.acc.process_index}")
        return [self.task.train[i] for i in rng.sample(range(len(self.task.train)), k)]


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
        env = TrainEnv(cfg, policy, reference, adv_source, acc, cfg.loss_chunk_size, init_from=init, model_cfg=p.model)
        update = make_update(cfg, env)
        state = load_checkpoint(sd, acc) or {"step": 0}
        start, skipped_total = state["step"], state.get("skipped_steps", 0)
        if acc.is_main_process:
            sd.metrics.truncate_after(start)
        engine = make_engine(cfg.rollout.engine, acc.unwrap_model(policy).lm, tok, cfg.rollout.batch_size)
        sampler = Sampler(cfg, engine, policy, tok, task, reward, acc, p.seed)
        samples_total = state.get("rollout_samples", 0)
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
            sampler.samples = 0
            batch, collect_stats = update.collect(sampler, step, examples)
            t_gen = time.time() - t0
            n_samples = float(acc.reduce(torch.tensor(float(sampler.samples), device=acc.device), "sum"))
            samples_total += int(n_samples)
            if batch is None:  # nothing to learn from this step (DAPO: every group had equal rewards)
                stats, row, skipped = {}, {"loss": float("nan"), "grad_norm": float("nan"), "update_skipped": 1}, False
                batch = collect_stats.pop("log_batch")
            else:
                batch = _shuffle_for_minibatches(batch, cfg, step)
                if cfg.algo == "lco" and cfg.advantage == "sparse":
                    batch.extras["seq_adv"] = sequence_advantages(batch.rewards.cpu(), batch.group.cpu(), cfg.advantage_norm, acc).to(acc.device)
                stats = update.prepare(batch)
                row, skipped = _optimize(update, batch, cfg, acc, opt, sched, trainable, step)
                check_finite_parameters(trainable, step)
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
            if acc.is_main_process and (step % cfg.log_every == 0 or step == cfg.steps or "heldout_acc" in row):
                sd.metrics.append(row)
            progress.update(step, {k: row[k] for k in ("loss", "reward_mean", "heldout_acc") if k in row})
            if checkpoint_due(sd, acc, step, cfg) and step < cfg.steps:
                save_checkpoint(sd, acc, step, cfg.keep_checkpoints, {"skipped_steps": skipped_total, "rollout_samples": samples_total})
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
    sums: dict[str, float] = {}
    skipped = False
    for _ in range(cfg.update_epochs):
        for mb_rows in _minibatch_rows(batch, cfg.minibatches):
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
                update.aux_zero_grad()
                skipped = True
                continue
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            out.update(update.aux_step())
            for k, v in {"loss": loss, **out}.items():
                sums[k] = sums.get(k, 0.0) + v
    n = max(cfg.update_epochs * cfg.minibatches, 1)
    return {k: v / n for k, v in sums.items()} if sums else {"loss": float("nan"), "grad_norm": float("nan")}, skipped


def _shuffle_for_minibatches(batch: RolloutBatch, cfg, step: int) -> RolloutBatch:
    """With several minibatches, put the rows in a random order (seeded by the step) once, before
    `prepare`: minibatch i is then the contiguous range i of the shuffled batch, i.e. the same
    random partition in every epoch, and its micro-batches are contiguous token ranges (full-size
    micro-batches rather than the short runs a scattered row subset would split into). Groups of a
    prompt's samples are no longer adjacent afterwards; `batch.group` says which rows belong together."""
    if cfg.minibatches <= 1:
        return batch
    perm = torch.randperm(batch.size, generator=torch.Generator().manual_seed(step))
    shuffled = batch.subset(perm.to(batch.input_ids.device))
    shuffled.extras = dict(batch.extras)
    return shuffled


def _minibatch_rows(batch, minibatches: int) -> list[list[int]]:
    """Minibatches of whole sequences: contiguous row ranges of the (already shuffled) batch."""
    if minibatches <= 1:
        return [list(range(batch.size))]
    size = math.ceil(batch.size / minibatches)
    return [list(range(i, min(i + size, batch.size))) for i in range(0, batch.size, size)]


def _backward(update, batch, rows, cfg, acc, part: str, stats: bool = False) -> dict:
    """Forward/backward over contiguous micro-batches of `rows`; no DDP sync until the last."""
    micro = cfg.micro_batch_size
    groups = _contiguous(rows, micro)
    total, agg, weight, extreme = 0.0, {}, {}, {}
    for i, mrows in enumerate(groups):
        last = i == len(groups) - 1
        with (contextlib.nullcontext() if last else acc.no_sync(update.env.policy)):
            loss, st = update.micro_loss(batch, mrows, part=part, stats=stats)
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
    for k, v in pos.items():  # other diagnostics are whole-batch values in every part (see Update.micro_loss)
        if k not in out and k != "loss" and not k.startswith("logit_grad"):
            out[k] = v
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
