"""Gradient-gap telemetry: the quantities of the RLVR step-size theory, measured on the update actually taken.

From "On the Optimization Dynamics of RLVR: Gradient Gap and Step Size Thresholds" (the `003_` seed):
with binary verdicts r ∈ {0, 1} and J the success rate,

* g⁺ = E[∇θ log π(o|q) | r = 1], g⁻ = E[∇θ log π(o|q) | r = 0] (its eq. 7; sequence log-prob = sum over
  the response tokens), measured at θ_k before the update; ∇J = J(1 − J)(g⁺ − g⁻) (its eq. 9);
* the update taken on the rollout batch, Δθ = θ_{k+1} − θ_k over ALL its optimizer steps (every epoch and
  minibatch), η = ‖Δθ‖, w = Δθ/η; the Gap Alignment Δμ = w·(g⁺ − g⁻) (eq. 10) and cos∠(Δθ, g⁺ − g⁻);
* Δμ·η, the first-order change of log-odds(J) (its Lemma 1 / Appendix D);
* M(K) = Σ_k [Δμ_k]₊ η_k (eq. 12) and the lower bound J_K ≥ J₀ / (J₀ + (1 − J₀) e^(−M/2)) (eq. 21);
* the step-size gauge η / (Δμ(1 − J)/T), T = mean response length: eq. 18 says η ≲ Δμ(1 − J)/T up to
  unknown constants, so the gauge is an order-of-magnitude indicator (a rising gauge, not its value, is the signal).

Every algorithm is measured the same way: the probe reads the gradients of log-probabilities and the
parameters, never the loss, so the update direction is whatever the algorithm did. Over several processes
the sums of scores are averaged by DDP/FSDP with weights that make them the global means; parameter shards
(FSDP) have their dot products all-reduced. Memory: two float32 buffers the size of the trainable
parameters (g⁺ − g⁻ and θ_k); compute: two extra forward + backward passes over the rollout batch.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from lco_cli.engines.chunked import chunked_selective_logprobs
from lco_cli.rl.update import TrainEnv, policy_head, row_chunks

#: the metric names written to train/metrics.jsonl on measured steps (docs/presets.md, docs/stability.md)
GAP_METRICS = ("gap_J", "gap_Jq_std", "gap_Jq_mixed", "gap_n_pos", "gap_n_neg", "gap_verdict", "gap_g_pos_norm",
               "gap_g_neg_norm", "gap_norm", "gap_eta", "gap_alignment", "gap_cos", "gap_logodds_step", "gap_T",
               "gap_threshold", "gap_gauge", "gap_M", "gap_J0", "gap_J_bound")


def binary_verdicts(batch, has_verifier: bool) -> torch.Tensor:
    """r ∈ {0, 1} per sequence: the task's verifier, or the sign of the sequence reward (r > 0) when there is none."""
    if has_verifier:
        return (batch.correct > 0.5).float()
    return (batch.rewards.to(batch.correct.device) > 0).float()


def j_bound(j0: float, m: float) -> float:
    """The theory's lower bound on the success rate after cumulative alignment M: J₀ / (J₀ + (1 − J₀) e^(−M/2))."""
    if j0 <= 0:
        return 0.0
    return j0 / (j0 + (1 - j0) * math.exp(-m / 2))


@dataclass
class GapHistory:
    """What accumulates over measured steps (saved in train checkpoints, so a resumed run goes on counting)."""

    M: float = 0.0
    J0: float | None = None


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a (possibly FSDP2 DTensor) parameter or gradient."""
    return t.to_local() if hasattr(t, "to_local") else t


class GradientGapProbe:
    """Measures g⁺, g⁻ at θ_k (`before_update`), then the update taken (`after_update`), for one rollout batch."""

    def __init__(self, env: TrainEnv, trainable: list[torch.nn.Parameter], has_verifier: bool,
                 history: GapHistory | None = None, sharded: bool = False):
        self.env, self.params, self.has_verifier = env, trainable, has_verifier
        self.history = history or GapHistory()
        self.sharded = sharded  # parameters are shards (FSDP): dot products need an all-reduce
        self._gap: list[torch.Tensor] | None = None
        self._theta: list[torch.Tensor] | None = None
        self._row: dict = {}
        self.last_gauge: float | None = None  # the newest defined gap_gauge (the collapse guard's message quotes it)

    # ------------------------------------------------------------------ collectives

    def _sum(self, x: float | torch.Tensor) -> float:
        device = self.env.accelerator.device
        t = torch.as_tensor(x, dtype=torch.float64, device=device).clone()
        return float(self.env.accelerator.reduce(t, "sum")) if self.env.world > 1 else float(t)

    def _param_sum(self, value: torch.Tensor) -> float:
        """A sum over parameter elements: shards add up over processes; replicated (DDP) parameters do not."""
        if self.sharded and self.env.world > 1:
            return float(self.env.accelerator.reduce(value.double().clone(), "sum"))
        return float(value)

    def _dot(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        if not a:
            return 0.0
        return self._param_sum(torch.stack([(x.double() * y.double()).sum() for x, y in zip(a, b)]).sum())

    # ------------------------------------------------------------------ before the update

    def _grads(self) -> list[torch.Tensor]:
        return [_local(p.grad).float() if p.grad is not None else torch.zeros_like(_local(p), dtype=torch.float32)
                for p in self.params]

    def _zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _score_backward(self, batch, weights: torch.Tensor) -> None:
        """Backward of Σ_i weights_i · log π(o_i|q_i) over the batch's micro-batches (DDP syncs on the last one).

        The weights are world / (global count of the part) on that part's rows, 0 elsewhere: DDP and FSDP average
        gradients over processes, which turns the per-process sums into the global mean score of the part."""
        env, cfg = self.env, self.env.cfg
        chunks = row_chunks(batch.size, cfg.micro_batch_size)
        for i, rows in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or env.world == 1 else env.accelerator.no_sync(env.policy)
            with sync:
                mb = batch.subset(rows)
                lp = chunked_selective_logprobs(policy_head(env, mb), mb.sampled_ids, env.chunk_size)
                seq_lp = torch.zeros(mb.size, dtype=lp.dtype, device=lp.device).index_add(0, mb.token_seq, lp)
                w = weights[rows].to(seq_lp.device, seq_lp.dtype)
                env.accelerator.backward((seq_lp * w).sum())

    def before_update(self, batch) -> None:
        """At θ_k: success rate, per-prompt spread, g⁺ − g⁻ (kept), and a copy of θ_k. Collective."""
        env = self.env
        r = binary_verdicts(batch, self.has_verifier).to(batch.input_ids.device)
        n_pos, n = self._sum(r.sum()), self._sum(float(r.numel()))
        n_neg = n - n_pos
        J = n_pos / max(n, 1.0)
        row: dict = {"gap_J": J, "gap_n_pos": n_pos, "gap_n_neg": n_neg,
                     "gap_verdict": "verifier" if self.has_verifier else "rm_sign",
                     "gap_T": self._sum(batch.response_len.sum().float()) / max(n, 1.0)}
        row.update(self._per_prompt(batch, r))
        if self.history.J0 is None:
            self.history.J0 = J
        self._gap = None
        if n_pos > 0 and n_neg > 0:  # both regions observed: g⁺ and g⁻ exist
            self._zero_grad()
            self._score_backward(batch, r * env.world / n_pos)
            g_pos = self._grads()
            self._zero_grad()
            self._score_backward(batch, (1 - r) * env.world / n_neg)
            g_neg = self._grads()
            self._zero_grad()
            row["gap_g_pos_norm"] = math.sqrt(self._dot(g_pos, g_pos))
            row["gap_g_neg_norm"] = math.sqrt(self._dot(g_neg, g_neg))
            self._gap = [a.sub_(b) for a, b in zip(g_pos, g_neg)]  # in place: one buffer, not two
            del g_neg
            row["gap_norm"] = math.sqrt(self._dot(self._gap, self._gap))
        self._theta = [_local(p.detach()).float().clone() for p in self.params]
        self._row = row

    def _per_prompt(self, batch, r: torch.Tensor) -> dict:
        """Spread of J_q over the prompts that have several samples (groups), and the share with 0 < J_q < 1."""
        groups = torch.unique(batch.group)
        counts = torch.stack([(batch.group == g).sum() for g in groups]).float() if len(groups) else torch.zeros(0)
        if not len(groups) or counts.max() < 2:
            return {}
        jq = torch.stack([r[batch.group == g].mean() for g in groups])[counts >= 2].double()
        k, s1, s2 = self._sum(float(jq.numel())), self._sum(jq.sum()), self._sum((jq * jq).sum())
        mixed = self._sum(((jq > 0) & (jq < 1)).double().sum())
        var = max(s2 / k - (s1 / k) ** 2, 0.0)
        return {"gap_Jq_std": math.sqrt(var * k / (k - 1)) if k > 1 else 0.0, "gap_Jq_mixed": mixed / k}

    # ------------------------------------------------------------------ after the update

    def after_update(self) -> dict:
        """The update actually taken since `before_update`: η, Δμ, cos, M(K), the J bound and the gauge."""
        row, self._row = self._row, {}
        if self._theta is None:
            return row
        delta = [_local(p.detach()).float() - t for p, t in zip(self.params, self._theta)]
        self._theta = None
        eta = math.sqrt(self._dot(delta, delta))
        row["gap_eta"] = eta
        hist = self.history
        if self._gap is not None:
            dot = self._dot(delta, self._gap)
            alignment = dot / eta if eta > 0 else 0.0
            row["gap_alignment"] = alignment
            row["gap_cos"] = alignment / row["gap_norm"] if row["gap_norm"] > 0 else 0.0
            row["gap_logodds_step"] = alignment * eta
            hist.M += max(alignment, 0.0) * eta
            J, T = row["gap_J"], row["gap_T"]
            threshold = alignment * (1 - J) / T if T > 0 else 0.0
            row["gap_threshold"] = threshold
            if threshold > 0:  # Δμ > 0 and J < 1: the gauge is defined
                row["gap_gauge"] = self.last_gauge = eta / threshold
        self._gap = None
        row.update({"gap_M": hist.M, "gap_J0": hist.J0, "gap_J_bound": j_bound(hist.J0, hist.M)})
        return row
