"""Full-vocabulary token losses at O(chunk × V) memory.

LCO needs targets over the whole vocabulary for every response token (π* = softmax(z_old + A/β),
eqs. 6–10), from up to four models (policy, behaviour policy, RM φ_DPO, reference φ_ref).
Materializing ``[N, V]`` logits is the cost of the method: 152k × 2048 tokens × 4 B = 1.2 GB per
model and per copy. Instead we keep the final hidden states ``[N, H]`` (after the final norm) and
the ``lm_head`` weights, and project them in token chunks.

The engine (:func:`chunked_token_loss`) works like fused linear-cross-entropy kernels: its
*forward* loops over chunks, computes the chunk's logits, the per-token loss, the gradient of the
loss wrt the chunk's logits, and immediately folds that gradient into ``grad_hidden`` (the chunk's
rows) and ``grad_weight``/``grad_bias`` (accumulated). *Backward* only scales the stored gradients
by ``grad_output``. Peak extra memory is O(chunk × V) plus one ``[V, H]`` weight-gradient buffer
(the same buffer autograd would allocate anyway).

Precision: the projection runs in the weight's dtype (the hidden chunk is cast to it, never the
weight: casting a 152k × H weight per chunk would cost more than the logits); logits are upcast to
at least float32 and the loss is computed there. Gradients come back in the input dtypes.
Autocast is disabled inside the engine so that this holds under ``accelerate``'s mixed precision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


TokenLoss = Callable[..., Tensor | tuple[Tensor, Tensor | None]]
Targets = Callable[[slice], dict[str, Tensor]]
Beta = float | Tensor

#: Token-chunk size we recommend for ``train.loss_chunk_size`` (see docs/bench_lco_memory.md).
DEFAULT_CHUNK_SIZE = 512


# --------------------------------------------------------------------------- heads


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype losses are computed in: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def project(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``hidden @ weightᵀ + bias`` in the weight's dtype, upcast to ≥ float32."""
    z = F.linear(hidden.to(weight.dtype), weight, bias)
    return z.to(compute_dtype(z.dtype))


@dataclass
class VocabHead:
    """One model's final projection: final hidden states and its ``lm_head``.

    Attributes:
        hidden: ``[N, H]`` final hidden states (after the final norm) of the N scored tokens.
        weight: ``[V, H]`` ``lm_head`` weight (possibly tied to the input embedding).
        bias: ``[V]`` or ``None``.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None

    def __post_init__(self) -> None:
        if self.hidden.dim() != 2:
            raise ValueError(f"VocabHead.hidden must be [N, H], got shape {tuple(self.hidden.shape)}")
        if self.weight.dim() != 2 or self.weight.shape[1] != self.hidden.shape[1]:
            raise ValueError(f"VocabHead.weight must be [V, H={self.hidden.shape[1]}], got {tuple(self.weight.shape)}")
        if self.bias is not None and tuple(self.bias.shape) != (self.weight.shape[0],):
            raise ValueError(f"VocabHead.bias must be [V={self.weight.shape[0]}], got {tuple(self.bias.shape)}")

    @property
    def num_tokens(self) -> int:
        return self.hidden.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def logits(self, sl: slice) -> Tensor:
        """Logits ``[c, V]`` of the tokens in ``sl``, in float32 (float64 for float64 inputs)."""
        return project(self.hidden[sl], self.weight, self.bias)


def fold_logit_grad(g: Tensor, h: Tensor, weight: Tensor, sl: slice, grad_h: Tensor | None, grad_w: Tensor | None,
                    grad_b: Tensor | None, row_weights: Tensor | None = None, *, first: bool = False) -> None:
    """Fold a chunk's logit gradient ``g = ∂L/∂z`` ``[c, V]`` (weight dtype) into the gradients of the
    hidden rows ``sl`` (``g W``), the weight (``gᵀ h``) and the bias (``Σ_t g``) — those that are wanted.

    ``row_weights [c]``: fold ``diag(w) g`` instead, scaling the small ``[c, H]`` / ``[c]`` operands rather than
    the ``[c, V]`` gradient. ``first``: ``grad_w`` is uninitialised and is set, not accumulated (saves zeroing it)."""
    w = None if row_weights is None else row_weights.to(h.dtype).unsqueeze(-1)
    if grad_h is not None:
        gh = g @ weight
        grad_h[sl] = (gh if w is None else gh.mul_(w)).to(grad_h.dtype)
    if grad_w is not None:
        hw = h if w is None else h * w
        if first:
            torch.mm(g.t(), hw, out=grad_w)
        else:
            grad_w.addmm_(g.t(), hw)
    if grad_b is not None:
        grad_b += (g.sum(0) if w is None else w.squeeze(-1).to(g.dtype) @ g).to(grad_b.dtype)


@dataclass
class TokenTelemetry:
    """Per-token entropy ``H(π(·|s_t))`` and ``log π(a_t)`` ``[N]`` of the policy, written (no grad) by a
    loss engine from the chunk logits it computes anyway: a behaviour pass would recompute them.

    Index it with a basic slice only: the result views the same storage, so a micro-batch's engine call
    fills its rows of the whole batch's buffers."""

    entropy: Tensor
    logprobs: Tensor

    @staticmethod
    def empty(n: int, dtype: torch.dtype, device) -> "TokenTelemetry":
        """NaN-filled buffers: a token no forward wrote shows up as NaN, never as a plausible value."""
        return TokenTelemetry(torch.full((n,), float("nan"), dtype=dtype, device=device),
                              torch.full((n,), float("nan"), dtype=dtype, device=device))

    def __getitem__(self, index: slice) -> "TokenTelemetry":
        if not isinstance(index, slice):
            raise TypeError("TokenTelemetry takes basic slices only (advanced indexing would copy, losing the writes)")
        return TokenTelemetry(self.entropy[index], self.logprobs[index])

    @torch.no_grad()
    def fill(self, sl: slice, z: Tensor, lse: Tensor, ids: Tensor) -> None:
        """Rows ``sl`` from a chunk's logits ``z`` [c, V] and their logsumexp; the same formulas as
        :func:`chunked_entropy_and_logprobs`, so the values match a separate no-grad pass up to the
        matmul's rounding of ``z`` (identical on the same inputs; a last bit where memory layout differs)."""
        self.entropy[sl] = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
        self.logprobs[sl] = z.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1) - lse


def token_chunks(n: int, chunk_size: int) -> Iterator[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


# --------------------------------------------------------------------------- telemetry


class _Stats:
    """Weighted token means of the telemetry the paper's figures need (Fig. 4–6, 8–9).

    Accumulated inside the chunk loop from the chunk's logits and per-token logit gradient
    ``∂ℓ_t/∂z_t`` (unweighted), so no extra ``[N, V]`` is ever built. Sums stay on the device;
    one host sync happens in :meth:`result`.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.weight_sum: Tensor | None = None

    def _add(self, key: str, value: Tensor) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    @torch.no_grad()
    def update(self, z: Tensor, grad: Tensor | None, w: Tensor, sampled_ids: Tensor | None) -> None:
        lse = torch.logsumexp(z, dim=-1)
        entropy = lse - (torch.softmax(z, dim=-1) * z).sum(-1)  # H = lse − E_π[z]
        self._add("entropy", (w * entropy).sum())
        self.weight_sum = w.sum() if self.weight_sum is None else self.weight_sum + w.sum()
        if sampled_ids is None:
            return
        ids = sampled_ids.long().unsqueeze(-1)
        self._add("sampled_prob", (w * (z.gather(-1, ids).squeeze(-1) - lse).exp()).sum())
        if grad is None:
            return
        g_abs = grad.abs()
        g_sampled = g_abs.gather(-1, ids).squeeze(-1)
        g_other = (g_abs.sum(-1) - g_sampled) / max(z.shape[-1] - 1, 1)
        self._add("logit_grad_sampled", (w * g_sampled).sum())
        self._add("logit_grad_other", (w * g_other).sum())

    def result(self) -> dict[str, float]:
        if self.weight_sum is None:
            return {}
        denom = self.weight_sum.clamp_min(torch.finfo(self.weight_sum.dtype).tiny)
        return {key: float(total / denom) for key, total in self.sums.items()}


# --------------------------------------------------------------------------- engine


@dataclass
class _ChunkLoop:
    """Everything the chunk loop needs besides the tensors autograd tracks."""

    token_loss: TokenLoss
    targets: Targets | None
    chunk_size: int
    stats: _Stats | None
    tokens: TokenTelemetry | None = None

    def targets_for(self, sl: slice) -> dict:
        with torch.no_grad():
            return self.targets(sl) if self.targets is not None else {}

    def chunk_loss(self, z: Tensor, tgt: dict, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """Per-token loss ``[c]`` and, if needed, ``∂ℓ_t/∂z_t`` ``[c, V]`` for one chunk."""
        with torch.enable_grad():
            zc = z.detach().requires_grad_(need_grad)
            out = self.token_loss(zc, **tgt)
            if isinstance(out, tuple):  # closed form: (loss [c], grad [c, V] or None)
                loss_t, grad = out
                if need_grad and grad is None:
                    raise ValueError("token_loss returned no logit gradient although one is needed")
            else:
                loss_t = out
                # Rows are independent, so the gradient of the sum is each token's own ∂ℓ_t/∂z_t.
                grad = torch.autograd.grad(loss_t.sum(), zc)[0] if need_grad else None
        if loss_t.shape != z.shape[:1]:
            raise ValueError(f"token_loss must return per-token losses [{z.shape[0]}], got {tuple(loss_t.shape)}")
        return loss_t.detach(), grad

    def run(
        self,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        weights: Tensor,
        needs: tuple[bool, bool, bool],
    ) -> tuple[Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
        """Loop over chunks: Σ_t w_t ℓ_t and its gradients wrt (hidden, weight, bias)."""
        need_h, need_w, need_b = needs
        need_grad = any(needs) or self.stats is not None
        cdtype = compute_dtype(weight.dtype)
        total = torch.zeros((), dtype=cdtype, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None  # every row is written once
        grad_w = torch.empty_like(weight) if need_w else None  # set by the first chunk's fold
        grad_b = torch.zeros_like(bias) if need_b else None
        first = True
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for sl in token_chunks(hidden.shape[0], self.chunk_size):
                tgt = self.targets_for(sl)  # before z: its temporaries are gone when z exists
                sampled_ids = tgt.get("sampled_ids")
                h = hidden[sl].to(weight.dtype)
                z = project(h, weight, bias)
                w = weights[sl].to(cdtype)
                if self.tokens is not None:
                    if sampled_ids is None:
                        raise ValueError("per-token telemetry needs targets(sl) to give 'sampled_ids'")
                    self.tokens.fill(sl, z, torch.logsumexp(z, dim=-1), sampled_ids)
                loss_t, grad = self.chunk_loss(z, tgt, need_grad)
                del tgt
                total += (w * loss_t).sum()
                if self.stats is not None:
                    self.stats.update(z, grad, w, sampled_ids)
                del z
                if not any(needs):
                    continue
                g = grad.to(weight.dtype)  # dL/dz = diag(w) g for L = Σ w_t ℓ_t: w is folded in on the [c, H] side
                del grad
                fold_logit_grad(g, h, weight, sl, grad_h, grad_w, grad_b, w, first=first)
                first = False
                del g
        if grad_w is not None and first:  # no tokens
            grad_w.zero_()
        return total, (grad_h, grad_w, grad_b)


class _ChunkedLoss(torch.autograd.Function):
    """Scalar Σ_t w_t ℓ_t whose gradients are computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, weights, loop: _ChunkLoop):
        needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        loss, ctx.grads = loop.run(hidden, weight, bias, weights, needs)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError(
                "chunked_token_loss: backward can run only once (its gradients are computed in "
                "forward and released after use); retain_graph / double backward is not supported"
            )
        grads, ctx.grads = ctx.grads, None
        # Scale in place: an out-of-place product would allocate a second [V, H] buffer.
        scaled = tuple(g.mul_(grad_out.to(g.dtype)) if g is not None else None for g in grads)
        return (*scaled, None, None)


def _validate_weights(weights: Tensor, n: int) -> None:
    if weights.shape != (n,):
        raise ValueError(f"weights must be [N={n}], got {tuple(weights.shape)}")


def chunked_token_loss(
    policy: VocabHead,
    token_loss: TokenLoss,
    weights: Tensor,
    chunk_size: int,
    targets: Targets | None = None,
    stats: bool = False,
    tokens: TokenTelemetry | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted full-vocabulary token loss ``Σ_t w_t ℓ_t`` at O(chunk × V) memory.

    Args:
        policy: the trained model's head; gradients flow to ``hidden``, ``weight`` and ``bias``
            (whichever require grad; a frozen/LoRA-wrapped head just skips ``grad_weight``).
        token_loss: ``token_loss(z, **targets(sl)) -> [c]``; ``z`` is the chunk's policy logits
            ``[c, V]`` (float32, requires grad). Must act row-wise (token t's loss depends only on
            row t), which every per-token loss does. It may instead return ``(loss [c], grad)``
            with the closed-form ``∂ℓ_t/∂z_t`` ``[c, V]`` (or ``None`` when ``z`` does not
            require grad) to skip autograd — cheaper in memory and time.
        weights: ``[N]`` token weights, constants (no gradient). For the mean over masked
            tokens pass ``mask / mask.sum()``.
        chunk_size: tokens per chunk; memory is O(chunk_size × V).
        targets: ``targets(sl) -> dict`` computed under ``no_grad`` per chunk (old/RM/ref logits,
            sampled ids, per-token β, ...). The key ``"sampled_ids"`` also feeds telemetry.
        stats: also return weighted token means of ``entropy`` and, when ``targets`` provides
            ``sampled_ids``, ``sampled_prob``, ``logit_grad_sampled`` (|∂ℓ_t/∂z| at the sampled
            token) and ``logit_grad_other`` (mean |∂ℓ_t/∂z| over the other V−1 tokens).
        tokens: ``[N]`` buffers to fill with each token's policy entropy and ``log π(a_t)`` (needs
            ``sampled_ids`` in ``targets``), unweighted, from the chunk logits the loss computes anyway.

    Returns:
        ``(loss, stats)``: a scalar (float32, or float64 for float64 inputs) with autograd to the
        policy head, and a dict of floats (empty unless ``stats``). ``backward`` runs once.
    """
    _validate_weights(weights, policy.num_tokens)
    if tokens is not None and tokens.entropy.shape != (policy.num_tokens,):
        raise ValueError(f"tokens must hold [N={policy.num_tokens}] rows, got {tuple(tokens.entropy.shape)}")
    loop = _ChunkLoop(token_loss, targets, chunk_size, _Stats() if stats else None, tokens)
    tracked = (policy.hidden, policy.weight, policy.bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tracked):
        loss = _ChunkedLoss.apply(policy.hidden, policy.weight, policy.bias, weights.detach(), loop)
    else:
        loss, _ = loop.run(policy.hidden, policy.weight, policy.bias, weights, (False, False, False))
    return loss, loop.stats.result() if loop.stats is not None else {}


# --------------------------------------------------------------------------- log-probs


@torch.no_grad()
def chunked_entropy_and_logprobs(head: VocabHead, sampled_ids: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Per-token policy entropy ``[N]`` and ``log π(a_t)`` ``[N]``, without grad, O(chunk × V)."""
    entropy = torch.empty(head.num_tokens, dtype=compute_dtype(head.weight.dtype), device=head.hidden.device)
    logprob = torch.empty_like(entropy)
    for sl in token_chunks(head.num_tokens, chunk_size):
        z = head.logits(sl)
        lse = torch.logsumexp(z, dim=-1)
        entropy[sl] = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
        logprob[sl] = z.gather(-1, sampled_ids[sl].long().unsqueeze(-1)).squeeze(-1) - lse
    return entropy, logprob


class _SelectiveLogprobs(torch.autograd.Function):
    """``log π(a_t) = z_t[a_t] − logsumexp(z_t)`` per token, recomputing chunk logits in backward.

    Forward keeps only ``logsumexp [N]``; backward rebuilds each chunk's logits and folds
    ``∂ log π(a_t)/∂z_t = onehot(a_t) − softmax(z_t)`` into the hidden/weight/bias gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, chunk_size, tokens):
        ids = ids.long()
        out = torch.empty(hidden.shape[0], dtype=compute_dtype(weight.dtype), device=hidden.device)
        lse = torch.empty_like(out)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for sl in token_chunks(hidden.shape[0], chunk_size):
                z = project(hidden[sl], weight, bias)
                lse[sl] = torch.logsumexp(z, dim=-1)
                out[sl] = z.gather(-1, ids[sl].unsqueeze(-1)).squeeze(-1) - lse[sl]
                if tokens is not None:
                    tokens.fill(sl, z, lse[sl], ids[sl])
        ctx.save_for_backward(hidden, weight, bias, ids, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, ids, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for sl in token_chunks(hidden.shape[0], ctx.chunk_size):
                h = hidden[sl].to(weight.dtype)
                go = grad_out[sl].to(lse.dtype).unsqueeze(-1)
                g = project(h, weight, bias).sub_(lse[sl].unsqueeze(-1)).exp_()  # softmax
                g.mul_(-go).scatter_add_(-1, ids[sl].unsqueeze(-1), go)  # go·(onehot − softmax)
                g = g.to(weight.dtype)
                fold_logit_grad(g, h, weight, sl, grad_h, grad_w, grad_b)
        return grad_h, grad_w, grad_b, None, None, None


def chunked_selective_logprobs(head: VocabHead, ids: Tensor, chunk_size: int, tokens: TokenTelemetry | None = None) -> Tensor:
    """``log π(a_t)`` ``[N]`` at the given token ids, WITH grad, at O(chunk × V) memory.

    For policy-gradient baselines (REINFORCE/PPO/GRPO/...): equals
    ``log_softmax(hidden @ Wᵀ + b).gather(ids)`` without materializing ``[N, V]``. Backward
    recomputes the chunk logits (one extra projection, like activation checkpointing). With
    ``tokens``, also writes each token's entropy and detached ``log π(a_t)`` there (no grad).
    """
    if ids.shape != (head.num_tokens,):
        raise ValueError(f"ids must be [N={head.num_tokens}], got {tuple(ids.shape)}")
    if tokens is not None and tokens.entropy.shape != (head.num_tokens,):
        raise ValueError(f"tokens must hold [N={head.num_tokens}] rows, got {tuple(tokens.entropy.shape)}")
    return _SelectiveLogprobs.apply(head.hidden, head.weight, head.bias, ids, chunk_size, tokens)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "TokenTelemetry",
    "VocabHead",
    "chunked_entropy_and_logprobs",
    "chunked_selective_logprobs",
    "chunked_token_loss",
    "compute_dtype",
    "project",
    "token_chunks",
]
