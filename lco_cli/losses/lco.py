"""Logits Convex Optimization (LCO) objectives — reference, unchunked implementations. (~400 lines: three objectives, each with its equations and closed-form gradient.)

Paper: "Stabilizing Policy Optimization via Logits Convexity" (arXiv 2603.00963).

Per response token ``t`` with logits ``z_θ ∈ R^|V|``:

* optimal logits (eq. 7):   ``z* = z_old + A / β``
* optimal policy (eq. 6):   ``π* = softmax(z*)``
* LCO-MSE (eq. 8):          ``mean_V (z_θ − z*)²``                 ∂/∂z = 2(z_θ − z*)/|V|
* LCO-LCH (eq. 9):          ``mean_V log cosh(z_θ − z*)``          ∂/∂z = tanh(z_θ − z*)/|V|  (eq. 44)
* LCO-KLD (eq. 10):         ``Σ_V π* (log π* − log π_θ)``          ∂/∂z = π_θ − π*            (eq. 47)

All three are convex in the logits (Lemma 4.6). The target ``z*`` is a constant: it is
always detached, so gradients only flow into ``z_θ``.

This module works on materialized logits ``[..., V]``; :mod:`lco_cli.engines.chunked` evaluates the
same per-token losses over the full vocabulary in token chunks without materializing
``[N, V]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Beta = float | Tensor

_LOG2 = math.log(2.0)


# --------------------------------------------------------------------------- log cosh


class _LogCosh(torch.autograd.Function):
    """``log cosh(x) = |x| + log1p(exp(−2|x|)) − log 2`` with ``d/dx = tanh(x)``.

    A custom function because (i) the stable formula overflows nowhere, (ii) autograd through
    it would save several ``[c, V]`` intermediates while we only need ``x``, and (iii) autograd
    through ``|x|`` gives a wrong second derivative at exactly ``x = 0``; ``tanh`` is smooth,
    so the Hessian (sech²) is right everywhere, including under double backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        ax = x.abs()
        return ax + torch.log1p(torch.exp(-2.0 * ax)) - _LOG2

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad_out * torch.tanh(x)


def log_cosh(x: Tensor) -> Tensor:
    """Numerically stable ``log cosh(x)``; its gradient is ``tanh(x)``."""
    return _LogCosh.apply(x)


# --------------------------------------------------------------------------- objectives


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1)`` without materializing the ``[..., V]`` product."""
    return torch.einsum("...v,...v->...", a, b)


class LCOObjective:
    """One LCO objective: a per-token loss of logits ``z`` against the target ``z*``.

    All methods act on the last dimension (the vocabulary) only, so they work on any
    ``[..., V]`` and rows are independent (the chunked engine relies on this).
    """

    name: str = ""

    def __init__(self, *, overwrite_target: bool = False) -> None:
        #: ``loss_and_grad`` may use ``z_star``'s storage as scratch (its values are then lost): set by
        #: callers that build z* per chunk and drop it after the call (the chunked loss), to save a buffer.
        self.overwrite_target = overwrite_target

    def token_loss(self, z: Tensor, z_star: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Per-token loss ``[...]`` (no reduction over tokens), differentiable in ``z``."""
        raise NotImplementedError

    def logit_grad(self, z: Tensor, z_star: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Closed-form ``∂ token_loss / ∂ z``, shape ``[..., V]``."""
        raise NotImplementedError

    def loss_and_grad(self, z: Tensor, z_star: Tensor, need_grad: bool = True) -> tuple[Tensor, Tensor | None]:
        """``(token_loss, logit_grad)`` without autograd, with as few ``[..., V]`` temporaries
        as possible — what the chunked engine uses (it runs on ``[chunk, V]`` blocks)."""
        z = z.detach()
        return self.token_loss(z, z_star), self.logit_grad(z, z_star) if need_grad else None


class LCOMSE(LCOObjective):
    """LCO-MSE, paper eq. (8): ``L = E_t [ 1/|V| Σ_a (z_θ(s_t,a) − z*(s_t,a))² ]``.

    Logit gradient ``2(z_θ − z*)/|V|``; Hessian ``(2/|V|) I`` — strongly convex (Lemma 4.6).
    """

    name = "mse"

    def token_loss(self, z: Tensor, z_star: Tensor) -> Tensor:
        return (z - z_star.detach()).square().mean(-1)

    def logit_grad(self, z: Tensor, z_star: Tensor) -> Tensor:
        return 2.0 * (z - z_star) / z.shape[-1]

    def loss_and_grad(self, z: Tensor, z_star: Tensor, need_grad: bool = True) -> tuple[Tensor, Tensor | None]:
        vocab = z.shape[-1]
        diff = z.detach() - z_star
        loss = _rowdot(diff, diff) / vocab
        return loss, diff.mul_(2.0 / vocab) if need_grad else None


class LCOLCH(LCOObjective):
    """LCO-LCH, paper eq. (9): ``L = E_t [ 1/|V| Σ_a log cosh(z_θ(s_t,a) − z*(s_t,a)) ]``.

    Logit gradient ``tanh(z_θ − z*)/|V|`` (eq. 44); Hessian ``diag(sech²(z_θ − z*))/|V|`` —
    locally strongly convex (Lemma 4.6).
    """

    name = "lch"

    def token_loss(self, z: Tensor, z_star: Tensor) -> Tensor:
        return log_cosh(z - z_star.detach()).mean(-1)

    def logit_grad(self, z: Tensor, z_star: Tensor) -> Tensor:
        return torch.tanh(z - z_star) / z.shape[-1]

    def loss_and_grad(self, z: Tensor, z_star: Tensor, need_grad: bool = True) -> tuple[Tensor, Tensor | None]:
        vocab = z.shape[-1]
        diff = z.detach() - z_star
        grad = torch.tanh(diff).div_(vocab) if need_grad else None
        ad = diff.abs_()  # log cosh x = |x| + log1p(exp(−2|x|)) − log 2, in place
        tail = ad.mul(-2.0).exp_().log1p_()
        loss = (ad.sum(-1) + tail.sum(-1)) / vocab - _LOG2
        return loss, grad


class LCOKLD(LCOObjective):
    """LCO-KLD, paper eq. (10): ``L = E_t [ Σ_a π*(a|s_t) log(π*(a|s_t) / π_θ(a|s_t)) ]``.

    ``π* = softmax(z*)`` (eq. 6). Logit gradient ``π_θ − π*`` (eq. 47); Hessian
    ``diag(π_θ) − π_θ π_θᵀ`` — PSD (Lemma 4.6).
    """

    name = "kld"

    def token_loss(self, z: Tensor, z_star: Tensor) -> Tensor:
        with torch.no_grad():
            log_p_star = torch.log_softmax(z_star, dim=-1)
            # π* = 0 where z* = −inf (masked logits): clamp so the term is 0·finite = 0, not nan.
            log_p_star.clamp_(min=torch.finfo(log_p_star.dtype).min)
            p_star = log_p_star.exp()
            neg_entropy_star = (p_star * log_p_star).sum(-1)
        # KL = Σ π* log π* − Σ π* log π_θ; only the cross-entropy term depends on z, and
        # autograd then keeps just π* and log π_θ for backward (chunk memory matters).
        del log_p_star
        cross_entropy = -(p_star * torch.log_softmax(z, dim=-1)).sum(-1)
        return neg_entropy_star + cross_entropy

    def logit_grad(self, z: Tensor, z_star: Tensor) -> Tensor:
        return torch.softmax(z, dim=-1) - torch.softmax(z_star, dim=-1)

    def loss_and_grad(self, z: Tensor, z_star: Tensor, need_grad: bool = True) -> tuple[Tensor, Tensor | None]:
        z = z.detach()
        fmin = torch.finfo(z_star.dtype).min
        # log π* (clamped: π* = 0 where z* = −inf, and 0·finite = 0, not nan); one fresh [..., V] buffer.
        log_p_star = torch.log_softmax(z_star, dim=-1).clamp_(min=fmin)
        # π* into z*'s storage when the caller hands it over (the chunked loss does): no second buffer.
        p_star = torch.exp(log_p_star, out=z_star) if self.overwrite_target else log_p_star.exp()
        # Σ π*(log π* − log π_θ) = Σ π* log π* − Σ π* log π_θ; log π* is not needed afterwards, so the
        # product goes in place and log π_θ reuses its buffer.
        neg_entropy_star = log_p_star.mul_(p_star).sum(-1)
        same = log_p_star.shape == z.shape and log_p_star.dtype == z.dtype
        log_p = torch.log_softmax(z, dim=-1, out=log_p_star) if same else torch.log_softmax(z, dim=-1)
        loss = neg_entropy_star - _rowdot(p_star, log_p)
        # eq. 47, π_θ − π*. π_θ goes through the very ops that made π* (log_softmax, exp) so that z = z* gives
        # an exact zero: rounding noise (~1e-9) would otherwise become lr-sized steps under Adam's scaling.
        # (The clamp only changes −inf entries, whose exp is 0 either way.)
        grad = log_p.exp_().sub_(p_star) if need_grad else None
        return loss, grad


OBJECTIVES: dict[str, type[LCOObjective]] = {"kld": LCOKLD, "mse": LCOMSE, "lch": LCOLCH}


def get_objective(kind: str, *, overwrite_target: bool = False) -> LCOObjective:
    """Instantiate the objective registered under ``kind`` ("kld", "mse" or "lch");
    ``overwrite_target``: see :class:`LCOObjective`."""
    try:
        return OBJECTIVES[kind](overwrite_target=overwrite_target)
    except KeyError:
        raise ValueError(f"unknown LCO objective {kind!r}; expected one of {sorted(OBJECTIVES)}") from None


# --------------------------------------------------------------------------- targets


def _beta_last(beta: Beta, ref: Tensor) -> Beta:
    """Make a per-token β ``[...]`` broadcast against ``[..., V]``."""
    if isinstance(beta, Tensor):
        return beta.to(ref.dtype).unsqueeze(-1)
    return float(beta)


def optimal_logits(old_logits: Tensor, advantages: Tensor, beta: Beta, *, inplace: bool = False) -> Tensor:
    """Optimal logits ``z* = z_old + A/β`` (eq. 7), detached. ``β`` float or per-token ``[...]``.

    ``inplace`` writes z* into ``advantages``' storage (the chunked loss saves a ``[c, V]`` copy)."""
    with torch.no_grad():
        beta = _beta_last(beta, old_logits)
        if inplace:
            if not (isinstance(beta, float) and beta == 1.0):  # A / 1 is A exactly: skip a [c, V] pass
                advantages.div_(beta)
            return advantages.add_(old_logits)
        return old_logits + advantages / beta


def select_beta(beta: Beta, beta_neg: float | None, sampled_adv: Tensor) -> Beta:
    """Per-token β for the ``beta_neg`` option: ``beta_neg`` where the sampled token's advantage
    ``A(s_t, a_t)`` is negative, ``beta`` elsewhere (``beta`` float or ``[...]``).

    A larger β for negative-advantage tokens damps the push-down of the sampled logit, the
    updates the paper finds to dominate PPO's gradient norm (Fig. 4). ``None`` returns ``beta``.
    """
    if beta_neg is None:
        return beta
    beta = torch.as_tensor(beta, dtype=sampled_adv.dtype, device=sampled_adv.device)
    return torch.where(sampled_adv < 0, torch.as_tensor(float(beta_neg), dtype=beta.dtype, device=beta.device), beta)


def masked_token_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values [...]`` over the tokens where ``mask`` is true (all when ``None``).

    Returns 0 (not nan) when the mask is empty, so an all-padding micro-batch is harmless.
    """
    if mask is None:
        return values.mean()
    mask = mask.to(torch.bool).expand_as(values)
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1)


def lco_loss(
    logits: Tensor,
    old_logits: Tensor,
    advantages: Tensor,
    beta: Beta,
    kind: str,
    mask: Tensor | None = None,
) -> Tensor:
    """Reference LCO loss (eqs. 8–10) on materialized logits.

    Args:
        logits: policy logits ``z_θ``, ``[..., V]`` (gradients flow here only).
        old_logits: behaviour-policy logits ``z_old``, ``[..., V]``.
        advantages: ``A(s_t, ·)`` over the vocabulary, ``[..., V]``.
        beta: β, a float or a tensor broadcastable to ``[...]`` (per-token β).
        kind: ``"mse"`` (eq. 8), ``"lch"`` (eq. 9) or ``"kld"`` (eq. 10).
        mask: ``[...]`` bool, tokens that count; ``None`` = all tokens.

    Returns:
        Scalar: mean over masked tokens of the per-token loss.
    """
    objective = get_objective(kind)
    z_star = optimal_logits(old_logits, advantages, beta)
    return masked_token_mean(objective.token_loss(logits, z_star), mask)


# --------------------------------------------------------------------------- advantages


def topk_support(old_logits: Tensor, k: int) -> Tensor:
    """Bool ``[..., V]``: true at the ``k`` largest logits of each token (ties broken by topk)."""
    k = min(int(k), old_logits.shape[-1])
    idx = old_logits.topk(k, dim=-1).indices
    support = torch.zeros_like(old_logits, dtype=torch.bool)
    return support.scatter_(-1, idx, True)


@torch.no_grad()
def dense_advantage(
    adv_logprobs: Tensor,
    *,
    center: bool = True,
    clip: float | None = None,
    topk: int | None = None,
    old_logits: Tensor | None = None,
) -> Tensor:
    """Shape a dense advantage ``A(s_t, ·)`` over the vocabulary (paper §4.2, §4.4).

    ``adv_logprobs`` is the raw advantage ``[c, V]`` (any ``[..., V]`` works), e.g.
    ``log φ_DPO − log φ_ref`` (eq. 13) or ``log φ`` (eq. 12). Order of operations:

    1. support: with ``topk``, keep only the ``topk`` most likely tokens under ``old_logits``
       (the authors' practice); without it the support is the whole vocabulary;
    2. center (``center=True``): subtract the per-token mean over the support. Over the full
       vocabulary this is a constant shift, so π* = softmax(z_old + A/β) is unchanged, while
       ‖A‖ — and with it the MSE/LCH convergence bound (eqs. 19–20) — is minimal (§4.4).
       With ``topk`` the shift applies to the support only, so π* does change;
    3. clip (``clip``): clamp to ``[−clip, clip]``, after centering so that the clamp is
       symmetric around the token's mean advantage rather than cutting raw log-probs
       (which are all negative);
    4. zero every token outside the support (A = 0 ⇒ z* = z_old there).

    Returns a new tensor (the input is not modified).
    """
    return dense_advantage_(adv_logprobs.clone(), center=center, clip=clip, topk=topk, old_logits=old_logits)


@torch.no_grad()
def dense_advantage_(
    adv: Tensor,
    *,
    center: bool = True,
    clip: float | None = None,
    topk: int | None = None,
    old_logits: Tensor | None = None,
) -> Tensor:
    """In-place :func:`dense_advantage` (saves one ``[c, V]`` copy in the chunked engine)."""
    support = None
    if topk is not None:
        if old_logits is None:
            raise ValueError("dense_advantage(topk=...) needs old_logits to pick the support")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        support = topk_support(old_logits, topk)
    if center:
        if support is None:
            adv -= adv.mean(-1, keepdim=True)
        else:
            # Entries outside the support may be -inf (log φ of masked tokens): keep them out.
            in_support = torch.where(support, adv, torch.zeros_like(adv))
            adv -= in_support.sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
    if clip is not None:
        if clip <= 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        adv.clamp_(-float(clip), float(clip))
    if support is not None:
        adv.masked_fill_(~support, 0.0)
    return adv


# --------------------------------------------------------------------------- the authors' support

#: `train.advantage_support`: the paper's full vocabulary; the k likeliest behaviour tokens with A centred
#: there and z* = z_old elsewhere (`policy_topk`); the authors' code (`authors`, below).
ADVANTAGE_SUPPORTS = ("vocab", "policy_topk", "authors")
#: what homzer/llama-rlhf writes outside the support, into both the old logits and the advantages
AUTHORS_FILL = -100.0


@torch.no_grad()
def standardise_on_support(adv_k: Tensor) -> Tensor:
    """``(A − mean_S A) / std_S A`` over the last dim (the k support entries; unbiased std as
    ``torch.std``), nan (a constant A) → 0 as their ``nan_to_num(0.0)``.

    homzer/llama-rlhf `src/ppo/trainer_lco.py`: the MSE/LCH trainers centre and divide by the std;
    `ParallelLCOTrainerForDPORM` (KLD) only divides. For KLD the centring shifts z* on the support by
    a per-token constant, which moves only the probability of the tokens outside it, and those sit
    ≥ 100 logits below (``AUTHORS_FILL``): π* agrees to < e^-90 relative (tested)."""
    centred = adv_k - adv_k.mean(-1, keepdim=True)
    return (centred / adv_k.std(-1, keepdim=True)).nan_to_num_(0.0)


def authors_loss_and_grad(kind: str, z: Tensor, z_old: Tensor, ids: Tensor, adv_k: Tensor, beta: Beta,
                          need_grad: bool = True) -> tuple[Tensor, Tensor | None]:
    """Per-token loss and logit gradient ``[c, V]`` with the authors' support (``train.advantage_support: authors``).

    ``ids [c, k]`` the support (top-k of ``z_old``), ``adv_k [c, k]`` the standardised advantage there.

    * KLD (their ``create_lco_log_target`` + ``KLDivLoss(...).sum(-1)``): old logits and advantages are
      ``AUTHORS_FILL`` outside the support, ``log π* = log_softmax(log_softmax(z_old') + A'/β)``, then
      ``KL(π* ‖ π_θ)`` over the full vocabulary — gradient ``π_θ − π*`` (eq. 47);
    * MSE / LCH (their ``MSELoss`` / ``LogCoshLoss`` ``.sum(-1)``): fitted on the support only,
      ``Σ_{a∈S} (z_θ − z*)²`` resp. ``Σ_{a∈S} log cosh(z_θ − z*)`` with ``z*_S = z_old,S + A/β`` —
      gradient ``2(z_θ − z*)`` resp. ``tanh(z_θ − z*)`` on S, 0 elsewhere. (Their code puts the current
      logits detached where we put the frozen z_old: the two agree at the first optimizer step on a batch.)
    """
    beta_k = beta.unsqueeze(-1) if isinstance(beta, Tensor) and beta.dim() else beta
    if kind == "kld":
        with torch.no_grad():
            old_f = torch.full_like(z_old, AUTHORS_FILL).scatter_(-1, ids, z_old.gather(-1, ids))
            adv_f = torch.full_like(z_old, AUTHORS_FILL).scatter_(-1, ids, adv_k.to(z_old.dtype))
            z_star = torch.log_softmax(old_f, dim=-1) + adv_f / beta_k
        return get_objective("kld").loss_and_grad(z, z_star, need_grad)
    if kind not in ("mse", "lch"):
        raise ValueError(f"unknown LCO objective {kind!r}")
    diff = z.detach().gather(-1, ids) - (z_old.gather(-1, ids) + adv_k.to(z_old.dtype) / beta_k)
    if kind == "mse":
        loss, g = diff.square().sum(-1), 2.0 * diff
    else:
        ad = diff.abs()
        loss, g = (ad + torch.log1p(torch.exp(-2.0 * ad)) - _LOG2).sum(-1), torch.tanh(diff)
    return loss, torch.zeros_like(z, dtype=g.dtype).scatter_(-1, ids, g) if need_grad else None


@torch.no_grad()
def sparse_advantage(sampled_ids: Tensor, seq_adv: Tensor, V: int) -> Tensor:
    """Sparse advantage, paper eq. (11): ``A(s_t, a) = A_seq`` if ``a = a_t`` (sampled), else 0.

    ``sampled_ids [c]`` (long), ``seq_adv [c]`` (the sequence advantage broadcast to its tokens).
    Returns ``[c, V]`` in ``seq_adv``'s (floating) dtype — only ever build this on a chunk.
    """
    dtype = seq_adv.dtype if seq_adv.is_floating_point() else torch.float32
    adv = torch.zeros(sampled_ids.shape + (V,), dtype=dtype, device=seq_adv.device)
    return adv.scatter_(-1, sampled_ids.long().unsqueeze(-1), seq_adv.to(dtype).unsqueeze(-1))


__all__ = [
    "ADVANTAGE_SUPPORTS", "AUTHORS_FILL", "authors_loss_and_grad", "standardise_on_support", "LCOKLD",
    "LCOLCH", "LCOMSE", "OBJECTIVES", "LCOObjective", "dense_advantage", "dense_advantage_", "get_objective",
    "lco_loss", "log_cosh", "masked_token_mean", "optimal_logits", "select_beta", "sparse_advantage",
    "topk_support",
]
