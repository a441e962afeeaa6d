"""The LCO loss the `lco train` loop runs, at O(chunk × V) memory (eqs. 6–13 on the chunked engine).

One place for z* = z_old + A/β (eq. 7, via `losses.lco.optimal_logits`), the β_neg choice
(`losses.lco.select_beta`) and the advantage shaping (`losses.lco.dense_advantage_`), evaluated chunk by
chunk inside `engines.chunked.chunked_token_loss`. Tested against `losses.lco.lco_loss` on materialised logits.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lco_cli.engines.chunked import (DEFAULT_CHUNK_SIZE, TokenTelemetry, VocabHead, chunked_token_loss, compute_dtype,
                                     project)
from lco_cli.losses.lco import (
    authors_loss_and_grad,
    dense_advantage_,
    get_objective,
    optimal_logits,
    select_beta,
    sparse_advantage,
    standardise_on_support,
)

Beta = float | Tensor

#: `train.advantage` values (§4.2): eq. 13, eq. 12, eq. 11.
ADVANTAGES = ("dpo", "logprob", "sparse")


def _log_softmax_(z: Tensor) -> Tensor:
    """In-place log-softmax of freshly projected logits (saves a [c, V] copy)."""
    return z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))


def _sub_projection_(out: Tensor, hidden: Tensor, head: VocabHead) -> Tensor:
    """``out −= project(hidden, head)`` — inside the matmul (no second ``[c, V]`` buffer, no extra pass)
    when the head computes in ``out``'s dtype; otherwise projected and upcast first, as :func:`project`."""
    if head.weight.dtype != out.dtype:
        return out.sub_(project(hidden, head.weight, head.bias))
    out.addmm_(hidden.to(head.weight.dtype), head.weight.t(), alpha=-1)
    return out if head.bias is None else out.sub_(head.bias)


def _support_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor) -> Tensor:
    """Logits of the token ids ``[c, k]`` only: ``h · W[ids]ᵀ (+ b[ids])`` — O(c·k·H), not O(c·V·H)."""
    z = torch.bmm(weight[ids], hidden.to(weight.dtype).unsqueeze(-1)).squeeze(-1)
    if bias is not None:
        z = z + bias[ids]
    return z.to(compute_dtype(z.dtype))


def dense_advantage_chunk(
    rm_hidden: Tensor,
    rm: VocabHead,
    ref_hidden: Tensor | None,
    ref: VocabHead | None,
    z_old: Tensor | None,
    *,
    center: bool = True,
    clip: float | None = None,
    topk: int | None = None,
) -> Tensor:
    """The shaped dense advantage ``[c, V]`` of one chunk (eq. 13, or eq. 12 when ``ref`` is None).

    ``log φ(·|s) − log φ_ref(·|s)`` then :func:`~lco_cli.losses.lco.dense_advantage_` shaping.
    With a top-k support *and* centring (the authors' practice) only the k support logits of φ and
    φ_ref are needed: centring over the support cancels both log-softmax normalisers, so
    ``A = (z_φ − z_ref)[support] − mean_support(z_φ − z_ref)``. That skips the two full-vocabulary
    projections (5 → 3 [c, V]-sized matmuls per chunk, like a sampled-token loss) with the same result.
    Centring over the full vocabulary cancels them as well: ``A = (z_φ − z_ref) − mean_V(z_φ − z_ref)``, with
    ``z_ref`` subtracted inside its matmul — no log-softmax passes and no second ``[c, V]`` buffer.
    ``z_old`` (the behaviour logits) is needed only for a top-k support; the result has its dtype.
    """
    if topk is not None and z_old is None:
        raise ValueError("a top-k support needs the behaviour logits z_old")
    if topk is not None and center:
        ids = z_old.topk(min(int(topk), z_old.shape[-1]), dim=-1).indices
        adv_k = _support_logits(rm_hidden, rm.weight, rm.bias, ids)
        if ref is not None:
            adv_k -= _support_logits(ref_hidden, ref.weight, ref.bias, ids)
        adv_k -= adv_k.mean(-1, keepdim=True)
        if clip is not None:
            adv_k.clamp_(-float(clip), float(clip))
        return torch.zeros_like(z_old).scatter_(-1, ids, adv_k.to(z_old.dtype))
    if topk is None and center:
        # Centring over the whole vocabulary cancels both log-softmax normalisers too:
        # A = (z_φ − z_ref) − mean_V(z_φ − z_ref). No logsumexp passes (a −inf logit gives nan either way).
        adv = project(rm_hidden, rm.weight, rm.bias)
        if ref is not None:
            _sub_projection_(adv, ref_hidden, ref)
    else:
        adv = _log_softmax_(project(rm_hidden, rm.weight, rm.bias))
        if ref is not None:
            adv -= _log_softmax_(project(ref_hidden, ref.weight, ref.bias))
    if z_old is not None:
        adv = adv.to(z_old.dtype)
    return dense_advantage_(adv, center=center, clip=clip, topk=topk, old_logits=z_old)


def authors_support_advantage(rm_hidden: Tensor, rm: VocabHead, ref_hidden: Tensor | None, ref: VocabHead | None,
                              z_old: Tensor, topk: int) -> tuple[Tensor, Tensor]:
    """The authors' support (``train.advantage_support: authors``): ``ids [c, k]`` = top-k of the behaviour
    logits (their `LogitsRolloutBuffer` keeps the policy's top-k logits and scores the RM on those indices),
    and ``(log φ − log φ_ref)`` there standardised (:func:`~lco_cli.losses.lco.standardise_on_support`).
    Centring cancels both log-softmax normalisers, so only the k support logits are projected."""
    ids = z_old.topk(min(int(topk), z_old.shape[-1]), dim=-1).indices
    adv_k = _support_logits(rm_hidden, rm.weight, rm.bias, ids)
    if ref is not None:
        adv_k -= _support_logits(ref_hidden, ref.weight, ref.bias, ids)
    return ids, standardise_on_support(adv_k).to(z_old.dtype)


def _validate_lco_inputs(policy, *, advantage, old, rm, ref, sampled_ids, seq_adv, beta) -> None:
    n, vocab = policy.num_tokens, policy.vocab_size
    if advantage not in ADVANTAGES:
        raise ValueError(f"unknown advantage {advantage!r}; expected one of {ADVANTAGES}")
    needed = {"dpo": ("rm", "ref"), "logprob": ("rm",), "sparse": ("sampled_ids", "seq_adv")}[advantage]
    given = {"rm": rm, "ref": ref, "sampled_ids": sampled_ids, "seq_adv": seq_adv}
    missing = [name for name in needed if given[name] is None]
    if missing:
        raise ValueError(f"advantage={advantage!r} needs {', '.join(missing)}")
    for name, head in (("old", old), ("rm", rm), ("ref", ref)):
        if head is None:
            continue
        if head.vocab_size != vocab:
            raise ValueError(f"{name} head has vocabulary {head.vocab_size}, policy has {vocab}: they must share a tokenizer")
        if head.num_tokens != n:
            raise ValueError(f"{name} head scores {head.num_tokens} tokens, policy {n}")
    for name, t in (("sampled_ids", sampled_ids), ("seq_adv", seq_adv)):
        if t is not None and t.shape != (n,):
            raise ValueError(f"{name} must be [N={n}], got {tuple(t.shape)}")
    if isinstance(beta, Tensor):
        if beta.dim() and beta.shape != (n,):
            raise ValueError(f"beta must be a float or [N={n}], got {tuple(beta.shape)}")
        if bool((beta <= 0).any()):
            raise ValueError("beta must be > 0")
    elif beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def lco_chunked_loss(
    policy: VocabHead,
    *,
    kind: str,
    beta: Beta,
    weights: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    beta_neg: float | None = None,
    old: VocabHead | None = None,
    advantage: str = "dpo",
    rm: VocabHead | None = None,
    ref: VocabHead | None = None,
    sampled_ids: Tensor | None = None,
    seq_adv: Tensor | None = None,
    center: bool = True,
    clip: float | None = None,
    topk: int | None = None,
    support: str = "vocab",
    stats: bool = False,
    tokens: TokenTelemetry | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """LCO loss (eqs. 8–10) against ``z* = z_old + A/β`` (eq. 7), chunked over tokens.

    Per chunk:

    * ``z_old = old.logits(sl)``, or the policy's own logits detached when ``old`` is None
      (one update per rollout: π_old = π_θ at the time of the update);
    * ``A`` (§4.2): ``dpo`` (eq. 13) ``log_softmax(rm) − log_softmax(ref)``; ``logprob``
      (eq. 12) ``log_softmax(rm)`` (rm = φ); ``sparse`` (eq. 11) the sampled token gets
      ``seq_adv``, all others 0;
    * then :func:`~lco_cli.losses.lco.dense_advantage` shaping: ``center`` / ``clip`` /
      ``topk`` (support = top-k of ``z_old``). For ``sparse``, ``topk`` is ignored: the
      support is already the sampled token, and a top-k cut could drop it;
    * ``loss_t = OBJECTIVES[kind].token_loss(z_θ, z*)`` — evaluated through its closed-form
      ``loss_and_grad`` (eqs. 44, 47), no autograd inside the chunk; result ``Σ_t weights_t · loss_t``.

    ``beta`` is a float or ``[N]`` (per-token β). ``beta_neg`` (needs ``sampled_ids``) replaces β
    on tokens whose *shaped* sampled-token advantage ``A(s_t, a_t)`` is negative — decided inside
    the chunk loop, since for dense advantages that value only exists there
    (:func:`~lco_cli.losses.lco.select_beta`). ``sampled_ids`` is required for ``sparse`` and
    ``beta_neg`` and, when given, also feeds the telemetry.
    ``support="authors"`` (dense advantages, needs ``topk``) replaces the shaping and the loss by the
    authors' code: :func:`authors_support_advantage` and :func:`~lco_cli.losses.lco.authors_loss_and_grad`
    (``center`` / ``clip`` do not apply; the sampled token's advantage is 0 off the support).
    ``tokens`` (needs ``sampled_ids``) receives each token's policy entropy and ``log π(a_t)``, as in
    :func:`chunked_token_loss`.
    Returns ``(loss, stats)`` as :func:`chunked_token_loss`.
    """
    if support == "authors" and (topk is None or advantage == "sparse"):
        raise ValueError("support='authors' needs topk and a dense advantage (dpo or logprob)")
    _validate_lco_inputs(
        policy, advantage=advantage, old=old, rm=rm, ref=ref, sampled_ids=sampled_ids, seq_adv=seq_adv, beta=beta
    )
    if beta_neg is not None and (beta_neg <= 0 or sampled_ids is None):
        raise ValueError("beta_neg must be > 0 and needs sampled_ids")
    # z* is built per chunk and dropped after the loss: the objective may reuse its storage.
    objective = get_objective(kind, overwrite_target=True)
    vocab = policy.vocab_size
    per_token_beta = isinstance(beta, Tensor) and beta.dim() > 0

    def targets(sl: slice) -> dict[str, Tensor]:
        tgt: dict[str, Tensor] = {}
        if old is not None:
            tgt["z_old"] = old.logits(sl)
        if advantage == "sparse":
            tgt["seq_adv"] = seq_adv[sl]
        else:
            # Hidden rows only: the advantage needs z_old (top-k support), known after projection.
            tgt["rm_hidden"] = rm.hidden[sl]
            if advantage == "dpo":
                tgt["ref_hidden"] = ref.hidden[sl]
        if sampled_ids is not None:
            tgt["sampled_ids"] = sampled_ids[sl]
        if per_token_beta:
            tgt["beta"] = beta[sl]
        return tgt

    def token_loss(z, z_old=None, rm_hidden=None, ref_hidden=None, seq_adv=None, sampled_ids=None, beta=beta):
        with torch.no_grad():
            # The policy's own detached logits double as z_old: no second projection needed.
            z_old = z.detach() if z_old is None else z_old.to(z.dtype)
            if advantage == "sparse":
                adv = sparse_advantage(sampled_ids, seq_adv.to(z.dtype), vocab)
                adv = dense_advantage_(adv, center=center, clip=clip)
            else:
                adv = dense_advantage_chunk(rm_hidden, rm, ref_hidden, ref if advantage == "dpo" else None, z_old,
                                            center=center, clip=clip, topk=topk)
            if beta_neg is not None:
                sampled_adv = adv.gather(-1, sampled_ids.long().unsqueeze(-1)).squeeze(-1)
                beta = select_beta(beta, beta_neg, sampled_adv)
            z_star = optimal_logits(z_old, adv, beta, inplace=True)
        # Closed-form loss and logit gradient (eqs. 8–10, 44, 47): fewer [c, V] temporaries.
        return objective.loss_and_grad(z, z_star, need_grad=z.requires_grad)

    def authors_token_loss(z, z_old=None, rm_hidden=None, ref_hidden=None, seq_adv=None, sampled_ids=None, beta=beta):
        with torch.no_grad():
            z_old = z.detach() if z_old is None else z_old.to(z.dtype)
            ids, adv_k = authors_support_advantage(rm_hidden, rm, ref_hidden, ref if advantage == "dpo" else None, z_old, topk)
            if beta_neg is not None:  # the sampled token's advantage: its support entry, 0 off the support
                on_support = ids == sampled_ids.long().unsqueeze(-1)
                beta = select_beta(beta, beta_neg, torch.where(on_support, adv_k, torch.zeros_like(adv_k)).sum(-1))
        return authors_loss_and_grad(kind, z, z_old, ids, adv_k, beta, need_grad=z.requires_grad)

    loss_fn = authors_token_loss if support == "authors" else token_loss
    return chunked_token_loss(policy, loss_fn, weights, chunk_size, targets=targets, stats=stats, tokens=tokens)
