"""LCO as a `train.algo`: fit z_θ to z* = z_old + A/β (eq. 7) with the KLD / MSE / LCH objective (eqs. 8–10).

The loss is `losses.lco_chunked.lco_chunked_loss` — the one function the objective tests check against
`losses.lco.lco_loss` — so z*, β_neg and the advantage shaping have a single home.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lco_cli.engines.chunked import VocabHead, compute_dtype
from lco_cli.losses.lco_chunked import authors_support_advantage, dense_advantage_chunk, lco_chunked_loss
from lco_cli.rl.specs import LCOSpec
from lco_cli.rl.update import (
    MicroBatch,
    Normaliser,
    Prepared,
    Update,
    flat,
    global_mean,
    part_mask,
    per_row,
    per_token,
    policy_head,
    row_chunks,
)


@dataclass(frozen=True)
class LCOPrepared(Prepared):
    """LCO's frozen inputs: the behaviour head (several steps per batch), the advantage heads, the
    sparse sequence advantages."""

    old_head: VocabHead = per_token()   # z_old; None = one step per batch, z_old = z_θ.detach()
    phi_head: VocabHead = per_token()   # φ_DPO (eq. 13) or φ (eq. 12)
    ref_head: VocabHead = per_token()   # φ_ref (eq. 13 only)
    seq_adv: torch.Tensor = per_row()   # sparse (eq. 11): the normalised sequence advantage per row


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


class LCOUpdate(LCOSpec, Update):
    """LCO (arXiv 2603.00963): logits-level convex fit to the KL-regularised optimum.

    Advantages (§4.2): `dpo` log φ_DPO(·|s) − log φ_ref(·|s) (eq. 13), `logprob` log φ(·|s)
    (eq. 12), `sparse` the sequence advantage on the sampled token (eq. 11). Dense advantages are
    centred per token over the vocabulary (§4.4) unless `train.advantage_center: false`. The loss
    is the mean over all response tokens of the minibatch.
    """

    def behaviour_from_training_forward(self) -> bool:
        # A top-k support is the behaviour policy's top k: the sampled-token advantage (split parts,
        # telemetry) needs z_old in `prepare`, before any training forward.
        return super().behaviour_from_training_forward() and not self.cfg.advantage_topk

    @torch.no_grad()
    def prepare(self, batch):
        cfg = self.cfg
        common, old_head, stats = self.behaviour(batch, keep_hidden=bool(cfg.advantage_topk))
        multi_step = cfg.update_epochs > 1 or cfg.minibatches > 1
        phi_head = ref_head = seq_adv = None
        if cfg.advantage in ("dpo", "logprob"):
            phi_head, ref_head = self._advantage_heads(batch)
            adv_sampled = self._sampled_dense_advantage(batch, phi_head, ref_head, old_head)
        else:
            seq_adv = sequence_advantages(batch.rewards.cpu(), batch.group.cpu(), cfg.advantage_norm,
                                          self.env.accelerator).to(batch.rewards.device)
            adv_sampled = seq_adv[batch.token_seq.to(seq_adv.device)]
        stats["advantage_mean"] = global_mean(self.env, adv_sampled)
        stats["advantage_pos_frac"] = global_mean(self.env, (adv_sampled >= 0).float())
        prep = LCOPrepared(old_logprobs=common.old_logprobs, ref_logprobs=common.ref_logprobs, entropy=common.entropy,
                           adv_sampled=adv_sampled, forward=common.forward, old_head=old_head if multi_step else None,
                           phi_head=phi_head, ref_head=ref_head if cfg.advantage == "dpo" else None, seq_adv=seq_adv)
        return prep, stats

    def _advantage_heads(self, batch) -> tuple[VocabHead, VocabHead | None]:
        """φ's (and φ_ref's) final hidden states of the whole batch's response tokens, with their heads."""
        phi_h, ref_h = [], []
        for rows in row_chunks(batch.size, self.cfg.micro_batch_size):
            mb = batch.subset(rows)
            phi, ref = self.env.reward.heads(mb.input_ids, mb.attention_mask)
            phi_h.append(flat(phi.hidden, mb.targets))
            if ref is not None:
                ref_h.append(flat(ref.hidden, mb.targets))
        phi_head = VocabHead(torch.cat(phi_h), phi.weight, phi.bias)
        return phi_head, VocabHead(torch.cat(ref_h), ref.weight, ref.bias) if ref_h else None

    def _sampled_dense_advantage(self, batch, phi: VocabHead, ref: VocabHead | None, old: VocabHead | None) -> torch.Tensor:
        """A(s_t, a_t) at the sampled token after centring/clipping/top-k (telemetry and the split parts)."""
        cfg, cs = self.cfg, self.env.chunk_size
        dpo = cfg.advantage == "dpo"
        sampled = batch.sampled_ids
        out = torch.empty(phi.num_tokens, dtype=compute_dtype(phi.weight.dtype), device=phi.hidden.device)
        for start in range(0, phi.num_tokens, cs):
            sl = slice(start, min(start + cs, phi.num_tokens))
            if cfg.advantage_support == "authors":  # the support entry of the sampled token, 0 off the support
                ids, adv_k = authors_support_advantage(phi.hidden[sl], phi, ref.hidden[sl] if dpo else None, ref if dpo else None,
                                                       old.logits(sl), cfg.advantage_topk)
                out[sl] = torch.where(ids == sampled[sl, None], adv_k, torch.zeros_like(adv_k)).sum(-1).to(out.dtype)
                continue
            adv = dense_advantage_chunk(phi.hidden[sl], phi, ref.hidden[sl] if dpo else None, ref if dpo else None,
                                        old.logits(sl) if cfg.advantage_topk else None,
                                        center=cfg.advantage_center, clip=cfg.advantage_clip, topk=cfg.advantage_topk)
            out[sl] = adv.gather(-1, sampled[sl, None]).squeeze(-1)
        return out

    def micro_loss(self, batch, view: MicroBatch, prep: LCOPrepared, norm: Normaliser, part: str = "all", stats: bool = False):
        """Σ_t w_t ℓ_t over this micro-batch's tokens; w_t = world size / global tokens."""
        cfg = self.cfg
        mb = batch.subset(view.rows)
        policy = policy_head(self.env, mb)
        weights = torch.full((policy.num_tokens,), norm.token_weight(), device=policy.hidden.device)
        weights = weights * part_mask(prep.adv_sampled, part).to(weights.device)
        seq_adv = prep.seq_adv[mb.token_seq.to(prep.seq_adv.device)] if prep.seq_adv is not None else None
        return lco_chunked_loss(policy, kind=cfg.objective, beta=cfg.beta, beta_neg=cfg.beta_neg, weights=weights,
                                chunk_size=self.env.chunk_size, old=prep.old_head, advantage=cfg.advantage,
                                rm=prep.phi_head, ref=prep.ref_head, sampled_ids=mb.sampled_ids, seq_adv=seq_adv,
                                center=cfg.advantage_center, clip=cfg.advantage_clip, topk=cfg.advantage_topk,
                                support=cfg.advantage_support, stats=stats, tokens=prep.forward)
