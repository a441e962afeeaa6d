"""The distillation baselines as `train.algo`s, with φ_DPO as the teacher: GKD and MiniLLM.

The teacher's final hidden states are frozen in `prepare` and projected in token chunks next to the
policy's inside `engines.chunked.chunked_token_loss`: no `[tokens × V]` tensor for a micro-batch.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from lco_cli.engines.chunked import VocabHead, chunked_selective_logprobs, chunked_token_loss
from lco_cli.errors import ConfigError
from lco_cli.losses.distillation import GKD, MiniLLM
from lco_cli.rl.advantage_sources import teacher_logprobs
from lco_cli.rl.policy_gradient import padded, response_mask
from lco_cli.rl.specs import GKDSpec, MiniLLMSpec
from lco_cli.rl.update import MicroBatch, Normaliser, Prepared, Update, global_mean, part_mask, per_token, policy_head


@dataclass(frozen=True)
class TeacherPrepared(Prepared):
    teacher_head: VocabHead = per_token()  # φ_DPO's final hidden states and lm_head
    mix_weights: torch.Tensor = per_token()  # MiniLLM: π_old(a_t) / p̃(a_t) of teacher-mixed sampling


class TeacherUpdate(Update):
    """Shared by GKD and MiniLLM: the loss class from `algo_args`, the chunked teacher term."""

    keeps_old_head = False
    diagnostic_prefixes = Update.diagnostic_prefixes + ("distill", "single_step", "pg_", "adv")

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.algo = self.loss_cls(self.loss_config(cfg))

    def teacher_loss(self, mb, head: VocabHead, prep: TeacherPrepared, norm: Normaliser, keep, stats, token_loss):
        """Σ_t w_t ℓ_t over the micro-batch, w_t = world / global tokens (0 outside `keep`); also the token mean.
        Its chunk logits also fill `prep.forward` (GKD's behaviour telemetry) when `prepare` set it."""
        teacher = prep.teacher_head
        weights = torch.full((head.num_tokens,), norm.token_weight(), device=head.hidden.device)
        weights = weights * keep.to(weights.device)
        sampled = mb.sampled_ids

        def targets(sl):
            return {"teacher": teacher.logits(sl), "sampled_ids": sampled[sl]}

        def per_token_loss(z, teacher, sampled_ids):
            return token_loss(z, teacher)

        loss, st = chunked_token_loss(head, per_token_loss, weights, self.env.chunk_size, targets=targets, stats=stats,
                                      tokens=prep.forward)
        mean = float(loss.detach()) / float(weights.sum()) if float(weights.sum()) > 0 else 0.0
        return loss, st, mean


class GKDUpdate(GKDSpec, TeacherUpdate):
    """GKD: generalised JSD (β = 0.5) between π_θ and φ_DPO over the full vocabulary, token mean.

    `collect`: with probability λ (`lmbda`, per step, seeded) the batch is on-policy samples, else
    the SFT demonstrations of the same prompts (GKD Alg. 1 / TRL's per-batch coin on its dataset)."""

    loss_cls = GKD

    def collect(self, sampler, step, examples):
        on_policy = random.Random(f"gkd-{sampler.seed}-{step}").random() < self.algo.config.lmbda
        batch = sampler.sample(examples, self.cfg.samples_per_prompt) if on_policy else sampler.pack(sampler.dataset(examples))
        return batch, {"gkd_on_policy": float(on_policy)}

    @torch.no_grad()
    def prepare(self, batch):
        common, _, stats = self.behaviour(batch)
        _, _, teacher = teacher_logprobs(self.env, batch, self.cfg.micro_batch_size, keep_head=True)
        prep = TeacherPrepared(old_logprobs=common.old_logprobs, ref_logprobs=common.ref_logprobs, entropy=common.entropy,
                               adv_sampled=torch.zeros(int(batch.response_len.sum()), device=batch.input_ids.device),  # every token "pos"
                               teacher_head=teacher, forward=common.forward)
        return prep, stats

    def micro_loss(self, batch, view: MicroBatch, prep: TeacherPrepared, norm: Normaliser, part="all", stats=False):
        mb = batch.subset(view.rows)
        head = policy_head(self.env, mb)
        keep = part_mask(prep.adv_sampled, part)
        loss, st, mean = self.teacher_loss(mb, head, prep, norm, keep, stats, self.algo.token_loss)
        return loss, {**st, "distill_jsd": mean}


class MiniLLMUpdate(MiniLLMSpec, TeacherUpdate):
    """MiniLLM: reverse KL to φ_DPO by policy gradient (Gu et al. 2023 §2.2).

    * single-step term: exact per-token KL(π_θ‖φ_DPO) over the full vocabulary, chunked;
    * long-term term: clipped PG on R^Norm_{t+1}, the length-normalised reward-to-go of
      r_t = log φ_DPO(a_t) − log π_old(a_t), whitened;
    * teacher-mixed sampling: rollouts draw each token from α·φ_DPO + (1 − α)·π_θ (α = 0.2) at the
      loop's temperature / top-p, and the ratio carries w_t = π_old(a_t) / p̃(a_t) (evaluated at
      temperature 1, as every ratio of this loop).
    """

    loss_cls = MiniLLM

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        if cfg.rollout.engine != "hf":
            raise ConfigError("train.algo=minillm: teacher-mixed sampling needs train.rollout.engine=hf")
        # the single-step term runs through the chunked engine; the PG part uses the loss class
        self.pg = MiniLLM(dataclasses.replace(self.algo.config, single_step_reg=False))

    def behaviour_from_training_forward(self) -> bool:
        return False  # the rewards r_t and mix weights need log π_old for the whole batch before any loss

    def collect(self, sampler, step, examples):
        alpha = self.algo.config.teacher_mix_alpha
        return sampler.sample(examples, self.cfg.samples_per_prompt, teacher=self.env.reward.rm, teacher_mix_alpha=alpha), {}

    @torch.no_grad()
    def prepare(self, batch):
        common, _, stats = self.behaviour(batch)
        teacher_lp, _, teacher = teacher_logprobs(self.env, batch, self.cfg.micro_batch_size,
                                                  keep_head=self.algo.config.single_step_reg)
        mask = response_mask(batch.response_len)
        old, teacher_padded = padded(common.old_logprobs.float(), mask), padded(teacher_lp.float(), mask)
        adv = self.algo.advantages(old, teacher_padded, mask)[mask]
        mix = self.algo.mix_weights(common.old_logprobs.float(), teacher_lp.float())
        stats["advantage_mean"] = global_mean(self.env, adv)
        stats["advantage_pos_frac"] = global_mean(self.env, (adv >= 0).float())
        stats["teacher_logprob_mean"] = global_mean(self.env, teacher_lp)
        stats["mix_weight_mean"] = global_mean(self.env, mix)
        prep = TeacherPrepared(old_logprobs=common.old_logprobs, ref_logprobs=common.ref_logprobs, entropy=common.entropy,
                               adv_sampled=adv, teacher_head=teacher, mix_weights=mix)
        return prep, stats

    def micro_loss(self, batch, view: MicroBatch, prep: TeacherPrepared, norm: Normaliser, part="all", stats=False):
        mb = batch.subset(view.rows)
        head = policy_head(self.env, mb)
        logprobs = chunked_selective_logprobs(head, mb.sampled_ids, self.env.chunk_size)
        mask = response_mask(batch.response_len[view.rows].to(logprobs.device))
        adv = prep.adv_sampled
        keep = part_mask(adv, part)
        # importance weights are 1 at padding (log w enters the ratio; 0 would give −inf there)
        inputs = {"old_logprobs": padded(prep.old_logprobs, mask), "mix_weights": padded(prep.mix_weights, mask, 1.0)}
        pg, diag = self.pg.loss(logprobs=padded(logprobs, mask), advantages=padded(adv * keep, mask), mask=mask, **inputs)
        if part != "all":
            with torch.no_grad():
                _, diag = self.pg.loss(logprobs=padded(logprobs.detach(), mask), advantages=padded(adv, mask), mask=mask, **inputs)
        loss = pg * norm.share(batch, view.rows, "token")
        out = {k: v for k, v in diag.items() if k != "loss"}
        if self.algo.config.single_step_reg:
            single, st, mean = self.teacher_loss(mb, head, prep, norm, keep, stats, self.algo.token_loss)
            loss = loss + single
            out.update(st)
            out["single_step_kl"] = mean
        return loss, out
