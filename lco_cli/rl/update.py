"""How each `train.algo` turns a rollout batch into a loss, all inside the same `lco train` loop.

An `Update` has two phases per rollout batch:

* `prepare(batch)` — no grad, once per batch: behaviour-policy quantities (log-probs, entropy, and
  the frozen hidden states when the batch is reused for several optimizer steps), reference
  log-probs, the RM's hidden states for dense advantages, sequence advantages.
* `micro_loss(mb, part)` — with grad, per micro-batch: the loss, already normalised so that the sum
  over micro-batches and processes is the batch objective (DDP averages over processes, so each
  process scales by the world size).

LCO lives here; the baselines register their own `Update` classes in `ALGORITHMS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lco_cli.engines.sharding import full_weight
from lco_cli.engines.chunked import VocabHead, chunked_entropy_and_logprobs, chunked_token_loss, compute_dtype, dense_advantage_chunk
from lco_cli.losses.lco import dense_advantage_, get_objective, sparse_advantage

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TrainConfig
    from lco_cli.rl.rollout import RolloutBatch


# --------------------------------------------------------------------------- the policy wrapper


class HiddenStatesLM(torch.nn.Module):
    """A causal LM whose forward returns final (post-norm) hidden states, not [B, L, V] logits.

    `accelerate.prepare` wraps *this* module, so DDP/FSDP see every forward; the lm_head is applied
    in token chunks by the loss engine (DESIGN §5 memory)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def _base(self):
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids, attention_mask):
        base = self._base()
        decoder = getattr(base, base.base_model_prefix)
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def head(self):
        return self._base().get_output_embeddings()


def head_of(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = (model.module if hasattr(model, "module") else model).head()
    return full_weight(head.weight), full_weight(getattr(head, "bias", None))


def flat(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, L, ...] states at prediction positions -> [N, ...] for the response tokens."""
    return x[:, :-1][targets]


@dataclass
class TrainEnv:
    """What an Update needs from the loop."""

    cfg: "TrainConfig"
    policy: Any                 # HiddenStatesLM (possibly DDP-wrapped)
    reference: Any              # frozen initial policy (HiddenStatesLM) for kl_ref / KL terms
    reward: Any                 # DPOReward or None
    accelerator: Any
    chunk_size: int
    init_from: Any = None       # resolved initial-policy location (PPO builds its value model from it)
    model_cfg: Any = None       # preset.model (dtype, LoRA, ...)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def policy_head(env: TrainEnv, mb: "RolloutBatch") -> VocabHead:
    h = env.policy(input_ids=mb.input_ids, attention_mask=mb.attention_mask)
    w, b = head_of(env.policy)
    return VocabHead(flat(h, mb.targets), w, b)


@torch.no_grad()
def frozen_head(model, mb: "RolloutBatch") -> VocabHead:
    h = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask)
    w, b = head_of(model)
    return VocabHead(flat(h, mb.targets), w, b)


def global_sum(env: TrainEnv, value: torch.Tensor) -> torch.Tensor:
    return env.accelerator.reduce(value.detach().float().clone(), "sum") if env.world > 1 else value.detach().float()


class Update:
    """Base: behaviour/reference log-probs and the common telemetry.

    Hooks the loop calls (defaults do what LCO needs; baselines override them):

    * `collect(sampler, step, examples)` — the step's scored rollout batch (DAPO refills, GKD mixes
      in dataset responses, MiniLLM samples teacher-mixed); `None` skips the update of the step.
    * `aux_step()` / `aux_zero_grad()` — after each policy optimizer step / on a skipped one (PPO's
      value model has its own optimizer).
    * `diagnostic(key)` — which micro-batch statistics go to metrics.jsonl.
    """

    needs_rm = False
    #: keep the behaviour policy's hidden states when a batch serves several optimizer steps
    #: (LCO's frozen z_old); policy-gradient methods only need the frozen log-probs.
    keeps_old_head = True
    #: micro-batch statistics (from `micro_loss`) that are logged, by key prefix
    diagnostic_prefixes: tuple[str, ...] = ("logit_grad", "clip", "ratio", "value", "approx", "explained", "kl_", "dropped")

    def __init__(self, cfg: "TrainConfig", env: TrainEnv):
        self.cfg, self.env = cfg, env

    def collect(self, sampler, step: int, examples: list) -> tuple["RolloutBatch | None", dict[str, float]]:
        """Roll out `train.samples_per_prompt` responses per prompt and score them."""
        return sampler.sample(examples, self.cfg.samples_per_prompt), {}

    def aux_step(self) -> dict[str, float]:
        """Called after every policy optimizer step (auxiliary models' optimizers)."""
        return {}

    def aux_zero_grad(self) -> None:
        """Called when a step is skipped (non-finite loss or gradient)."""

    def diagnostic(self, key: str) -> bool:
        return key.startswith(self.diagnostic_prefixes)

    @torch.no_grad()
    def prepare(self, batch: "RolloutBatch") -> dict[str, float]:
        """Per-token behaviour log-prob/entropy and reference log-prob for the whole batch."""
        cs = self.env.chunk_size
        old_lp, ent, ref_lp, hidden_old = [], [], [], []
        keep_old = self.keeps_old_head and (self.cfg.update_epochs > 1 or self.cfg.minibatches > 1)
        for rows in _rows(batch.size, self.cfg.micro_batch_size):
            mb = batch.subset(rows)
            head = frozen_head(self.env.policy, mb)
            e, lp = chunked_entropy_and_logprobs(head, mb.sampled_ids, cs)
            old_lp.append(lp)
            ent.append(e)
            ref_lp.append(chunked_entropy_and_logprobs(frozen_head(self.env.reference, mb), mb.sampled_ids, cs)[1])
            if keep_old:
                hidden_old.append(head.hidden)
        batch.extras["old_logprobs"] = torch.cat(old_lp)
        batch.extras["ref_logprobs"] = torch.cat(ref_lp)
        batch.extras["entropy"] = torch.cat(ent)
        if keep_old:  # frozen pre-update states: z_old stays the behaviour policy's across epochs
            w, b = head_of(self.env.policy)
            batch.extras["old_head"] = (torch.cat(hidden_old), w.detach().clone(), None if b is None else b.detach().clone())
        return self.common_stats(batch)

    def common_stats(self, batch: "RolloutBatch") -> dict[str, float]:
        old, ref = batch.extras["old_logprobs"], batch.extras["ref_logprobs"]
        log_ratio = ref - old  # k3 estimator of KL(π_old || π_ref), per token
        k3 = torch.expm1(log_ratio) - log_ratio
        n = global_sum(self.env, torch.tensor(float(old.numel()), device=old.device)).clamp(min=1)
        return {
            "entropy": float(global_sum(self.env, batch.extras["entropy"].sum()) / n),
            "sampled_prob": float(global_sum(self.env, old.exp().sum()) / n),
            "kl_ref": float(global_sum(self.env, k3.sum()) / n),
        }

    def micro_loss(self, batch: "RolloutBatch", rows: list[int], part: str = "all", stats: bool = False) -> tuple[torch.Tensor, dict]:
        """Loss of the micro-batch `rows` (contiguous), normalised for summing over micro-batches/processes."""
        raise NotImplementedError


def token_slice(batch: "RolloutBatch", rows: list[int]) -> slice:
    """Flat token range of contiguous `rows` (flat order is row-major)."""
    lens = batch.response_len
    start = int(lens[: rows[0]].sum())
    return slice(start, start + int(lens[rows[0] : rows[-1] + 1].sum()))


def _rows(size: int, micro: int) -> list[list[int]]:
    return [list(range(i, min(i + micro, size))) for i in range(0, size, micro)]


# --------------------------------------------------------------------------- LCO


class LCOUpdate(Update):
    """LCO: fit z_θ to z* = z_old + A/β (eq. 7) with the KLD / MSE / LCH objective (eqs. 8–10).

    Advantages (§4.2): `dpo` log φ_DPO(·|s) − log φ_ref(·|s) (eq. 13), `logprob` log φ(·|s)
    (eq. 12), `sparse` the sequence advantage on the sampled token (eq. 11). Dense advantages are
    centred per token over the vocabulary (§4.4) unless `train.advantage_center: false`. The loss
    is the mean over all response tokens of the batch.
    """

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.objective = get_objective(cfg.objective)
        self.needs_rm = cfg.advantage in ("dpo", "logprob") or cfg.reward == "rm"

    @torch.no_grad()
    def prepare(self, batch):
        stats = super().prepare(batch)
        cfg = self.cfg
        if cfg.advantage in ("dpo", "logprob"):
            rm_h, ref_h, adv_sampled = [], [], []
            for rows in _rows(batch.size, cfg.micro_batch_size):
                mb = batch.subset(rows)
                (h_rm, w_rm, b_rm), (h_ref, w_ref, b_ref) = self.env.reward.hidden_states(mb.input_ids, mb.attention_mask)
                rm_h.append(flat(h_rm, mb.targets))
                ref_h.append(flat(h_ref, mb.targets))
            batch.extras["rm_head"] = (torch.cat(rm_h), w_rm, b_rm)
            batch.extras["ref_head"] = (torch.cat(ref_h), w_ref, b_ref)
            adv_sampled = self._sampled_dense_advantage(batch)
        else:
            seq_adv = batch.extras["seq_adv"]
            adv_sampled = seq_adv[batch.token_seq.to(seq_adv.device)]
        batch.extras["adv_sampled"] = adv_sampled
        beta = torch.full_like(adv_sampled, cfg.beta)
        if cfg.beta_neg is not None:
            beta[adv_sampled < 0] = cfg.beta_neg
        batch.extras["beta"] = beta
        n = global_sum(self.env, torch.tensor(float(adv_sampled.numel()))).clamp(min=1)
        stats["advantage_mean"] = float(global_sum(self.env, adv_sampled.sum()) / n)
        stats["advantage_pos_frac"] = float(global_sum(self.env, (adv_sampled >= 0).float().sum()) / n)
        return stats

    def _sampled_dense_advantage(self, batch) -> torch.Tensor:
        """A(s_t, a_t) at the sampled token after centring/clipping/top-k (sign decides β_neg)."""
        cfg, cs = self.cfg, self.env.chunk_size
        rm, ref = VocabHead(*batch.extras["rm_head"]), VocabHead(*batch.extras["ref_head"])
        old = self._old_head(batch, None) if cfg.advantage_topk else None  # only the support needs it
        sampled = batch.sampled_ids
        out = torch.empty(rm.num_tokens, dtype=compute_dtype(rm.weight.dtype), device=rm.hidden.device)
        for start in range(0, rm.num_tokens, cs):
            sl = slice(start, min(start + cs, rm.num_tokens))
            adv = self._dense_advantage(rm, ref, sl, old.logits(sl) if cfg.advantage_topk else None)
            out[sl] = adv.gather(-1, sampled[sl, None]).squeeze(-1)
        return out

    def _dense_advantage(self, rm: VocabHead, ref: VocabHead, sl: slice, z_old: torch.Tensor | None) -> torch.Tensor:
        """Shaped dense advantage of the tokens in `sl` (eq. 13 or 12; top-k fast path in the engine)."""
        cfg = self.cfg
        dpo = cfg.advantage == "dpo"
        return dense_advantage_chunk(rm.hidden[sl], rm, ref.hidden[sl] if dpo else None, ref if dpo else None, z_old,
                                     center=cfg.advantage_center, clip=cfg.advantage_clip, topk=cfg.advantage_topk)

    def _old_head(self, batch, policy: VocabHead | None) -> VocabHead:
        if "old_head" in batch.extras:
            return VocabHead(*batch.extras["old_head"])
        if policy is not None:
            return VocabHead(policy.hidden.detach(), policy.weight.detach(), None if policy.bias is None else policy.bias.detach())
        with torch.no_grad():  # only reached for the top-k sign pre-pass with a single update
            hs = []
            for rows in _rows(batch.size, self.cfg.micro_batch_size):
                hs.append(frozen_head(self.env.policy, batch.subset(rows)).hidden)
            w, b = head_of(self.env.policy)
            return VocabHead(torch.cat(hs), w.detach(), None if b is None else b.detach())

    def micro_loss(self, batch, rows: list[int], part: str = "all", stats: bool = False):
        """Σ_t w_t ℓ_t over this micro-batch's tokens; w_t = 1/(global tokens) · world size."""
        cfg, ex = self.cfg, batch.extras
        mb, tokens = batch.subset(rows), token_slice(batch, rows)
        policy = policy_head(self.env, mb)
        adv_sampled = ex["adv_sampled"][tokens]
        weights = torch.full((policy.num_tokens,), self.env.world / ex["global_tokens"], device=policy.hidden.device)
        if part == "pos":
            weights = weights * (adv_sampled >= 0)
        elif part == "neg":
            weights = weights * (adv_sampled < 0)
        old = VocabHead(ex["old_head"][0][tokens], *ex["old_head"][1:]) if "old_head" in ex else None
        rm = VocabHead(ex["rm_head"][0][tokens], *ex["rm_head"][1:]) if "rm_head" in ex else None
        ref = VocabHead(ex["ref_head"][0][tokens], *ex["ref_head"][1:]) if "ref_head" in ex else None
        sampled = mb.sampled_ids
        beta = ex["beta"][tokens]
        seq_adv = ex["seq_adv"][rows][mb.token_seq] if cfg.advantage == "sparse" else None
        V = policy.vocab_size

        def targets(sl):
            t = {"sampled_ids": sampled[sl], "beta": beta[sl]}
            if old is not None:
                t["z_old"] = old.logits(sl)
            if cfg.advantage == "sparse":
                t["seq_adv"] = seq_adv[sl]
            else:
                t["sl"] = sl  # the advantage needs z_old (top-k support), known after projection
            return t

        def token_loss(z, sampled_ids, beta, z_old=None, sl=None, seq_adv=None):
            with torch.no_grad():
                z_old = z.detach() if z_old is None else z_old.to(z.dtype)
                if sl is None:
                    adv = dense_advantage_(sparse_advantage(sampled_ids, seq_adv.to(z.dtype), V),
                                           center=cfg.advantage_center, clip=cfg.advantage_clip)
                else:
                    adv = self._dense_advantage(rm, ref, sl, z_old)
                z_star = z_old + adv / beta.to(z.dtype)[:, None]
            # Closed-form loss and logit gradient (eqs. 8–10, 44, 47), as in `lco_chunked_loss`.
            return self.objective.loss_and_grad(z, z_star, need_grad=z.requires_grad)

        return chunked_token_loss(policy, token_loss, weights, self.env.chunk_size, targets=targets, stats=stats)


ALGORITHMS: dict[str, type[Update]] = {"lco": LCOUpdate}


def make_update(cfg: "TrainConfig", env: TrainEnv) -> Update:
    if cfg.algo not in ALGORITHMS:
        from lco_cli.rl.baseline_updates import register_baselines

        register_baselines(ALGORITHMS)
    return ALGORITHMS[cfg.algo](cfg, env)


def needs_reward_model(cfg: "TrainConfig") -> bool:
    if cfg.reward == "rm":
        return True
    if cfg.algo == "lco":
        return cfg.advantage in ("dpo", "logprob")
    return cfg.algo in ("ppo", "gkd", "minillm")
