"""How a `train.algo` turns a rollout batch into a loss: the `Update` protocol and its typed hand-off.

Per rollout batch the train loop calls

* `prepare(batch) -> (Prepared, stats)` — once, no grad: behaviour-policy quantities (log-probs,
  entropy, the frozen hidden states when the batch serves several optimizer steps), reference
  log-probs, the RM's hidden states for dense advantages, advantages. `Prepared` is a frozen
  dataclass of the algorithm; `Prepared.take(view)` slices it for one micro-batch. With one
  optimizer step per batch there is no behaviour pass: the training forward fills
  `Prepared.forward`, and `forward_stats(prep)` (after the update) gives the behaviour telemetry.
* `micro_loss(batch, view, prepared, norm, part)` — with grad, per micro-batch: the loss already
  scaled by the explicit `Normaliser` so that the sum over micro-batches and processes is the batch
  objective (DDP averages over processes, so each process scales by the world size).

Concrete algorithms subclass their spec (`rl.specs`, torch-free) and are found through `lco_cli.rl.registry`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from lco_cli.engines.chunked import TokenTelemetry, VocabHead, chunked_entropy_and_logprobs, compute_dtype
from lco_cli.engines.sharding import full_weight
from lco_cli.rl.spec import AlgoSpec

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TrainConfig
    from lco_cli.rl.rollout import RolloutBatch
    from lco_cli.rl.sampling import Sampler


# --------------------------------------------------------------------------- the policy wrapper


class HiddenStatesLM(torch.nn.Module):
    """A causal LM whose forward returns final (post-norm) hidden states, not [B, L, V] logits.

    `accelerate.prepare` wraps *this* module, so DDP/FSDP see every forward; the lm_head is applied
    in token chunks by the loss engine (docs/architecture.md, "memory")."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def base(self):
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids, attention_mask):
        base = self.base()
        decoder = getattr(base, base.base_model_prefix)
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def head(self):
        return self.base().get_output_embeddings()


def head_of(model, vocab: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The lm_head weight and bias, restricted to the first `vocab` rows: the tokenizer's tokens. The rows
    past it are embedding padding (Qwen2.5-3B has 151,936 rows for 151,665 tokens); they get no
    probability mass and models of one tokenizer but different padding compare over the same tokens."""
    head = (model.module if hasattr(model, "module") else model).head()
    weight, bias = full_weight(head.weight), full_weight(getattr(head, "bias", None))  # whole under FSDP2
    if vocab is None:
        return weight, bias
    return weight[:vocab], None if bias is None else bias[:vocab]


def flat(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, L, ...] states at prediction positions -> [N, ...] for the response tokens."""
    return x[:, :-1][targets]


@dataclass
class TrainEnv:
    """What an Update needs from the loop."""

    cfg: "TrainConfig"
    policy: Any                 # HiddenStatesLM (possibly DDP-wrapped)
    reference: Any              # frozen initial policy (HiddenStatesLM) for kl_ref / KL terms; None when nothing reads it
    reward: Any                 # an advantage source (rl.advantage_sources) or None
    accelerator: Any
    chunk_size: int
    init_from: Any = None       # resolved initial-policy location (PPO builds its value model from it)
    model_cfg: Any = None       # preset.model (dtype, LoRA, ...)
    vocab: int | None = None    # the tokenizer's size: logits are compared over these tokens only

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def policy_head(env: TrainEnv, mb: "RolloutBatch") -> VocabHead:
    h = env.policy(input_ids=mb.input_ids, attention_mask=mb.attention_mask)
    w, b = head_of(env.policy, env.vocab)
    return VocabHead(flat(h, mb.targets), w, b)


@torch.no_grad()
def frozen_head(model, mb: "RolloutBatch", vocab: int | None = None) -> VocabHead:
    h = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask)
    w, b = head_of(model, vocab)
    return VocabHead(flat(h, mb.targets), w, b)


def global_sum(env: TrainEnv, value: torch.Tensor) -> torch.Tensor:
    return env.accelerator.reduce(value.detach().float().clone(), "sum") if env.world > 1 else value.detach().float()


def global_mean(env: TrainEnv, x: torch.Tensor) -> float:
    """Mean of `x` over every element on every process."""
    n = global_sum(env, torch.tensor(float(x.numel()), device=x.device)).clamp(min=1)
    return float(global_sum(env, x.float().sum()) / n)


def row_chunks(size: int, micro: int) -> list[list[int]]:
    """Consecutive row ranges of at most `micro` rows."""
    return [list(range(i, min(i + micro, size))) for i in range(0, size, micro)]


# --------------------------------------------------------------------------- the hand-off


@dataclass(frozen=True)
class MicroBatch:
    """Where a micro-batch sits in its rollout batch: contiguous `rows` and their flat token range."""

    rows: list[int]
    tokens: slice

    @staticmethod
    def of(batch: "RolloutBatch", rows: list[int]) -> "MicroBatch":
        lens = batch.response_len
        start = int(lens[: rows[0]].sum())
        return MicroBatch(rows, slice(start, start + int(lens[rows[0] : rows[-1] + 1].sum())))


@dataclass(frozen=True)
class Normaliser:
    """The minibatch's global token and sequence counts (all processes) and the world size.

    A micro-batch mean times its share of the global count, times the world size (DDP averages
    gradients over processes), sums to the minibatch objective over micro-batches and processes."""

    global_tokens: float
    global_seqs: float
    world: int

    def token_weight(self) -> float:
        return self.world / self.global_tokens

    def share(self, batch: "RolloutBatch", rows: list[int], aggregation: str) -> float:
        """Factor turning a loss class's micro-batch mean (over `aggregation`: "token" or "seq")
        into its share of the minibatch objective."""
        if aggregation == "seq":
            return len(rows) / self.global_seqs * self.world
        return float(batch.response_len[rows].sum()) / self.global_tokens * self.world


def per_token(**kw) -> Any:
    """A `Prepared` field of one row per response token ([N, ...] tensor or a VocabHead)."""
    return field(default=None, metadata={"slice": "token"}, **kw)


def per_row(**kw) -> Any:
    """A `Prepared` field of one row per sequence ([B, ...])."""
    return field(default=None, metadata={"slice": "row"}, **kw)


@dataclass(frozen=True)
class Prepared:
    """What `Update.prepare` froze for a rollout batch; subclasses add their algorithm's inputs."""

    old_logprobs: torch.Tensor = per_token()  # log π_old(a_t): the behaviour policy
    ref_logprobs: torch.Tensor = per_token()  # log π_ref(a_t): the initial policy
    entropy: torch.Tensor = per_token()       # H(π_old(·|s_t))
    adv_sampled: torch.Tensor = per_token()   # A(s_t, a_t): its sign picks the split-telemetry part
    #: one optimizer step per batch (π_old = π_θ when the loss runs): no behaviour pass, `old_logprobs`
    #: and `entropy` are None and the training forward writes them here (views: a micro-batch's slice
    #: writes into the whole batch's buffers); `Update.forward_stats` reads them after the update.
    forward: TokenTelemetry = per_token()

    def take(self, view: MicroBatch) -> "Prepared":
        """This hand-off restricted to one micro-batch (shared weights are not copied)."""
        changes = {}
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.metadata.get("slice")
            if value is None or kind is None:
                continue
            index = view.tokens if kind == "token" else view.rows
            changes[f.name] = VocabHead(value.hidden[index], value.weight, value.bias) if isinstance(value, VocabHead) else value[index]
        return dataclasses.replace(self, **changes)


def part_mask(adv: torch.Tensor, part: str) -> torch.Tensor:
    """Tokens of the split-telemetry part: all, advantage ≥ 0 (pos) or < 0 (neg)."""
    if part == "pos":
        return adv >= 0
    if part == "neg":
        return adv < 0
    return torch.ones_like(adv, dtype=torch.bool)


# --------------------------------------------------------------------------- the protocol


class Update(AlgoSpec):
    """Base of every `train.algo`: behaviour/reference log-probs, telemetry, and the loop hooks. What the
    algorithm needs and checks is its spec's (`rl.spec.AlgoSpec`, torch-free); built-ins subclass theirs.

    Hooks the loop calls (defaults do what LCO needs; baselines override them):

    * `collect(sampler, step, examples)` — the step's scored rollout batch (DAPO refills, GKD mixes
      in dataset responses, MiniLLM samples teacher-mixed); `None` skips the update of the step.
    * `aux_step()` / `aux_zero_grad()` — after each policy optimizer step / on a skipped one (PPO's
      value model has its own optimizer).
    * `diagnostic(key)` — which micro-batch statistics go to metrics.jsonl.
    """

    #: the pure loss class of the policy-gradient / distillation updates (its `Config` is the spec's `algo_args`)
    loss_cls: ClassVar[type | None] = None
    #: keep the behaviour policy's hidden states when a batch serves several optimizer steps
    #: (LCO's frozen z_old); policy-gradient methods only need the frozen log-probs.
    keeps_old_head: ClassVar[bool] = True
    #: micro-batch statistics (from `micro_loss`) that are logged, by key prefix
    diagnostic_prefixes: ClassVar[tuple[str, ...]] = ("logit_grad", "clip", "ratio", "value", "approx", "explained",
                                                      "kl_", "dropped")

    # ---- the loop hooks

    def __init__(self, cfg: "TrainConfig", env: TrainEnv):
        self.cfg, self.env = type(self).resolve(cfg), env

    def collect(self, sampler: "Sampler", step: int, examples: list) -> tuple["RolloutBatch | None", dict[str, Any]]:
        """Roll out `train.samples_per_prompt` responses per prompt and score them."""
        return sampler.sample(examples, self.cfg.samples_per_prompt), {}

    def aux_step(self) -> dict[str, float]:
        """Called after every policy optimizer step (auxiliary models' optimizers)."""
        return {}

    def aux_zero_grad(self) -> None:
        """Called when a step is skipped (non-finite loss or gradient)."""

    def diagnostic(self, key: str) -> bool:
        return key.startswith(self.diagnostic_prefixes)

    # ---- prepare

    def behaviour_from_training_forward(self) -> bool:
        """Whether the training forward stands in for the behaviour pass: with one optimizer step per
        rollout batch (1 epoch × 1 minibatch) π_old = π_θ when the loss runs, so log π_old(a_t) is the
        training forward's detached log π_θ(a_t) (ratio 1 in value, its gradient intact) and a no-grad
        policy pass would compute the same numbers again (TRL's GRPOTrainer skips it the same way).
        Algorithms that need π_old before the loss (PPO's KL-shaped rewards, MiniLLM's rewards) say no."""
        return self.cfg.update_epochs == 1 and self.cfg.minibatches == 1

    @torch.no_grad()
    def behaviour(self, batch: "RolloutBatch", keep_hidden: bool = False) -> tuple[Prepared, VocabHead | None, dict[str, float]]:
        """Per-token behaviour log-prob/entropy and reference log-prob for the whole batch, the
        behaviour policy's frozen head (when the batch serves several optimizer steps and the
        algorithm `keeps_old_head`, or when asked), and the common telemetry (entropy, sampled_prob, kl_ref).

        When `behaviour_from_training_forward()` (and no frozen head is asked for) only the reference
        runs here: `old_logprobs`/`entropy` stay None, `forward` holds the buffers the training forward
        fills, and the common telemetry comes from `forward_stats` after the update instead."""
        if self.behaviour_from_training_forward() and not keep_hidden:
            return self._reference_only(batch), None, {}
        cs = self.env.chunk_size
        old_lp, ent, ref_lp, hidden_old = [], [], [], []
        keep_old = keep_hidden or (self.keeps_old_head and (self.cfg.update_epochs > 1 or self.cfg.minibatches > 1))
        for rows in row_chunks(batch.size, self.cfg.micro_batch_size):
            mb = batch.subset(rows)
            head = frozen_head(self.env.policy, mb, self.env.vocab)
            e, lp = chunked_entropy_and_logprobs(head, mb.sampled_ids, cs)
            old_lp.append(lp)
            ent.append(e)
            if self.env.reference is not None:
                ref_lp.append(self._reference_logprobs(mb))
            if keep_old:
                hidden_old.append(head.hidden)
        old_head = None
        if keep_old:  # frozen pre-update states: z_old stays the behaviour policy's across epochs
            w, b = head_of(self.env.policy, self.env.vocab)
            old_head = VocabHead(torch.cat(hidden_old), w.detach().clone(), None if b is None else b.detach().clone())
        common = Prepared(old_logprobs=torch.cat(old_lp), ref_logprobs=torch.cat(ref_lp) if ref_lp else None, entropy=torch.cat(ent))
        return common, old_head, self.common_stats(common)

    def _reference_logprobs(self, mb: "RolloutBatch") -> torch.Tensor:
        """log π_ref(a_t) of a micro-batch. By default the reference runs every step even where no loss term needs
        it (β_KL = 0, LCO): `kl_ref` is the one drift measure common to every algorithm (docs/scale.md);
        `train.telemetry.kl_ref: false` then loads no reference at all (`env.reference` is None)."""
        head = frozen_head(self.env.reference, mb, self.env.vocab)
        return chunked_entropy_and_logprobs(head, mb.sampled_ids, self.env.chunk_size)[1]

    @torch.no_grad()
    def _reference_only(self, batch: "RolloutBatch") -> Prepared:
        n_tokens, device = int(batch.response_len.sum()), batch.input_ids.device
        ref_lp = None
        if self.env.reference is not None:
            ref_lp = torch.cat([self._reference_logprobs(batch.subset(rows))
                                for rows in row_chunks(batch.size, self.cfg.micro_batch_size)])
        # telemetry buffers in the loss dtype (≥ float32, as the log-probs); not from head_of: under FSDP that gathers
        dtype = compute_dtype(next(self.env.policy.parameters()).dtype) if ref_lp is None else ref_lp.dtype
        forward = TokenTelemetry.empty(n_tokens, dtype, device)
        return Prepared(ref_logprobs=ref_lp, forward=forward)

    def forward_stats(self, prep: Prepared) -> dict[str, float]:
        """The common telemetry (`entropy`, `sampled_prob`, `kl_ref`) read off the training forward, for a
        batch whose `prepare` skipped the behaviour pass; {} otherwise (`prepare` logged it). Called by the
        loop after the batch's update on every process (global means are collective)."""
        if prep.forward is None:
            return {}
        return self.common_stats(Prepared(old_logprobs=prep.forward.logprobs, ref_logprobs=prep.ref_logprobs,
                                          entropy=prep.forward.entropy))

    def common_stats(self, prep: Prepared) -> dict[str, float]:
        old, ref = prep.old_logprobs, prep.ref_logprobs
        stats = {"entropy": global_mean(self.env, prep.entropy), "sampled_prob": global_mean(self.env, old.exp())}
        if ref is not None:  # absent, not faked, when no reference was loaded
            log_ratio = ref - old  # k3 estimator of KL(π_old || π_ref), per token
            stats["kl_ref"] = global_mean(self.env, torch.expm1(log_ratio) - log_ratio)
        return stats

    def prepare(self, batch: "RolloutBatch") -> tuple[Prepared, dict[str, float]]:
        raise NotImplementedError

    def micro_loss(self, batch: "RolloutBatch", view: MicroBatch, prep: Prepared, norm: Normaliser,
                   part: str = "all", stats: bool = False) -> tuple[torch.Tensor, dict]:
        """Loss of the micro-batch `view` (contiguous rows), scaled by `norm` for summing over
        micro-batches and processes; `prep` is already `take(view)`-sliced."""
        raise NotImplementedError
