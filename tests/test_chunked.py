"""The chunked full-vocabulary engine equals the reference losses on materialized logits —
values and gradients wrt hidden, weight and bias — for every objective × advantage."""

import pytest
import torch
import torch.nn.functional as F

from lco_cli.engines.chunked import (
    VocabHead,
    chunked_entropy_and_logprobs,
    chunked_selective_logprobs,
    chunked_token_loss,
)
from lco_cli.losses.lco_chunked import dense_advantage_chunk, lco_chunked_loss
from lco_cli.losses.lco import dense_advantage, lco_loss, select_beta, sparse_advantage

D = torch.float64
N, H, V = 13, 6, 11
KINDS = ["kld", "mse", "lch"]
ADVANTAGES = ["dpo", "logprob", "sparse"]


def _rand(g, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=D)


class Case:
    """Random float64 policy / old / RM / ref heads and rollout data for N tokens."""

    def __init__(self, seed=0, bias=True):
        g = torch.Generator().manual_seed(seed)
        self.h = _rand(g, N, H).requires_grad_()
        self.W = _rand(g, V, H).requires_grad_()
        self.b = _rand(g, V).requires_grad_() if bias else None
        self.old = VocabHead(_rand(g, N, H), _rand(g, V, H), _rand(g, V) if bias else None)
        self.rm = VocabHead(_rand(g, N, H), _rand(g, V, H, scale=2.0))
        self.ref = VocabHead(_rand(g, N, H), _rand(g, V, H, scale=2.0))
        self.ids = torch.randint(0, V, (N,), generator=g)
        self.seq_adv = _rand(g, N)
        self.mask = torch.rand(N, generator=g) > 0.3
        self.mask[[0, N - 1]] = torch.tensor([True, False])
        self.beta = torch.rand(N, generator=g, dtype=D) + 0.5

    @property
    def policy(self):
        return VocabHead(self.h, self.W, self.b)

    def params(self):
        return [p for p in (self.h, self.W, self.b) if p is not None and p.requires_grad]

    def weights(self):
        return self.mask.to(D) / self.mask.sum()

    def logits(self):
        z = self.h @ self.W.T
        return z + self.b if self.b is not None else z

    def reference(self, kind, advantage, *, beta, use_old, center=True, clip=None, topk=None, beta_neg=None):
        """lco_loss on materialized [N, V] logits — the unchunked reference."""
        z = self.logits()
        z_old = self.old.logits(slice(None)) if use_old else z.detach()
        full = slice(None)
        if advantage == "sparse":
            adv = dense_advantage(sparse_advantage(self.ids, self.seq_adv, V), center=center, clip=clip)
        else:
            raw = torch.log_softmax(self.rm.logits(full), -1)
            if advantage == "dpo":
                raw = raw - torch.log_softmax(self.ref.logits(full), -1)
            adv = dense_advantage(raw, center=center, clip=clip, topk=topk, old_logits=z_old)
        beta = select_beta(beta, beta_neg, adv.gather(-1, self.ids[:, None]).squeeze(-1))
        return lco_loss(z, z_old, adv, beta, kind, self.mask)

    def chunked(self, kind, advantage, *, beta, use_old, chunk_size, stats=False, **kw):
        return lco_chunked_loss(
            self.policy,
            kind=kind,
            beta=beta,
            weights=self.weights(),
            chunk_size=chunk_size,
            old=self.old if use_old else None,
            advantage=advantage,
            rm=self.rm,
            ref=self.ref,
            sampled_ids=self.ids,
            seq_adv=self.seq_adv,
            stats=stats,
            **kw,
        )


def assert_same_loss_and_grads(case, chunked_loss, ref_loss):
    torch.testing.assert_close(chunked_loss, ref_loss, atol=1e-12, rtol=1e-10)
    params = case.params()
    got = torch.autograd.grad(chunked_loss, params)
    want = torch.autograd.grad(ref_loss, params)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


# --------------------------------------------------------------------------- LCO: chunked == reference


@pytest.mark.parametrize("advantage", ADVANTAGES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [4, 5, 64])
def test_chunked_equals_reference(kind, advantage, chunk_size):
    case = Case(seed=chunk_size)
    loss, _ = case.chunked(kind, advantage, beta=0.7, use_old=False, chunk_size=chunk_size)
    assert_same_loss_and_grads(case, loss, case.reference(kind, advantage, beta=0.7, use_old=False))


@pytest.mark.parametrize("advantage", ADVANTAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_old_head_and_per_token_beta(kind, advantage):
    case = Case(seed=7)
    loss, _ = case.chunked(kind, advantage, beta=case.beta, use_old=True, chunk_size=3)
    assert_same_loss_and_grads(case, loss, case.reference(kind, advantage, beta=case.beta, use_old=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("advantage", ["dpo", "logprob"])
def test_topk_clip_no_centering(kind, advantage):
    case = Case(seed=11)
    for knobs in ({"topk": 3, "clip": 0.8}, {"center": False}, {"topk": 4, "center": False}):
        loss, _ = case.chunked(kind, advantage, beta=0.5, use_old=True, chunk_size=6, **knobs)
        assert_same_loss_and_grads(case, loss, case.reference(kind, advantage, beta=0.5, use_old=True, **knobs))


@pytest.mark.parametrize("ref_too", [True, False])
def test_topk_fast_path_skips_full_projections(ref_too, monkeypatch):
    """Centred top-k advantages come from the k support logits only — and equal the full path."""
    case = Case(seed=23)
    ref = case.ref if ref_too else None
    ref_h = case.ref.hidden if ref_too else None
    z_old = case.old.logits(slice(None))
    raw = torch.log_softmax(case.rm.logits(slice(None)), -1)
    if ref_too:
        raw = raw - torch.log_softmax(case.ref.logits(slice(None)), -1)
    for knobs in ({"topk": 3}, {"topk": 5, "clip": 0.4}, {"topk": V}):
        want = dense_advantage(raw, old_logits=z_old, **knobs)
        with monkeypatch.context() as m:
            m.setattr("lco_cli.losses.lco_chunked.project", lambda *a: pytest.fail("full-vocabulary projection on the fast path"))
            got = dense_advantage_chunk(case.rm.hidden, case.rm, ref_h, ref, z_old, **knobs)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert ((got != 0).sum(-1) <= knobs["topk"]).all()
    # without centring the log-softmax normalisers matter: the full path runs
    full = dense_advantage_chunk(case.rm.hidden, case.rm, ref_h, ref, z_old, topk=3, center=False)
    torch.testing.assert_close(full, dense_advantage(raw, old_logits=z_old, topk=3, center=False))
    with pytest.raises(ValueError, match="z_old"):
        dense_advantage_chunk(case.rm.hidden, case.rm, ref_h, ref, None, topk=3)


@pytest.mark.parametrize("advantage", ADVANTAGES)
def test_beta_neg_uses_shaped_sampled_advantage(advantage):
    case = Case(seed=19)
    beta = case.beta if advantage == "logprob" else 0.6
    loss, _ = case.chunked("mse", advantage, beta=beta, use_old=True, chunk_size=5, beta_neg=2.5)
    want = case.reference("mse", advantage, beta=beta, use_old=True, beta_neg=2.5)
    assert_same_loss_and_grads(case, loss, want)
    # and it differs from plain β, i.e. some sampled advantages were negative
    plain = case.reference("mse", advantage, beta=beta, use_old=True)
    assert abs(loss.item() - plain.item()) > 1e-6


def test_sparse_ignores_topk_and_clips():
    case = Case(seed=12)
    loss, _ = case.chunked("mse", "sparse", beta=0.5, use_old=False, chunk_size=5, topk=2, clip=0.3)
    assert_same_loss_and_grads(case, loss, case.reference("mse", "sparse", beta=0.5, use_old=False, clip=0.3))


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_weight_no_bias(kind):
    """LoRA / frozen lm_head: no grad_weight is computed; hidden still gets its gradient."""
    case = Case(seed=3, bias=False)
    case.W.requires_grad_(False)
    loss, _ = case.chunked(kind, "dpo", beta=1.0, use_old=False, chunk_size=4)
    assert_same_loss_and_grads(case, loss, case.reference(kind, "dpo", beta=1.0, use_old=False))


def test_hidden_without_grad_only_weight_grads():
    case = Case(seed=4)
    case.h.requires_grad_(False)
    loss, _ = case.chunked("kld", "dpo", beta=1.0, use_old=True, chunk_size=4)
    assert_same_loss_and_grads(case, loss, case.reference("kld", "dpo", beta=1.0, use_old=True))


def test_tied_weight():
    """lm_head tied to the input embedding: both gradient paths reach the same parameter."""
    g = torch.Generator().manual_seed(5)
    emb = _rand(g, V, H).requires_grad_()
    mix = _rand(g, H, H)
    ids_in = torch.randint(0, V, (N,), generator=g)
    case = Case(seed=5, bias=False)

    def hidden():  # a one-layer "model": embed → tanh(· M)
        return torch.tanh(emb[ids_in] @ mix)

    case.h, case.W = hidden(), emb
    loss, _ = case.chunked("lch", "dpo", beta=1.0, use_old=False, chunk_size=4)
    (got,) = torch.autograd.grad(loss, emb)
    case.h = hidden()
    (want,) = torch.autograd.grad(case.reference("lch", "dpo", beta=1.0, use_old=False), emb)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_backward_scales_by_grad_output_and_accumulates():
    case = Case(seed=6)
    loss, _ = case.chunked("kld", "logprob", beta=1.0, use_old=False, chunk_size=4)
    (3.0 * loss).backward()
    ref = case.reference("kld", "logprob", beta=1.0, use_old=False)
    want = torch.autograd.grad(3.0 * ref, [case.h, case.W, case.b])
    for p, w in zip((case.h, case.W, case.b), want):
        torch.testing.assert_close(p.grad, w, atol=1e-12, rtol=1e-10)


def test_second_backward_raises():
    case = Case(seed=6)
    loss, _ = case.chunked("mse", "dpo", beta=1.0, use_old=False, chunk_size=4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_no_grad_mode_gives_value_only():
    case = Case(seed=8)
    with torch.no_grad():
        loss, _ = case.chunked("kld", "dpo", beta=1.0, use_old=False, chunk_size=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, case.reference("kld", "dpo", beta=1.0, use_old=False).detach())


def test_low_precision_inputs():
    """bf16 hidden/weight: loss computed in float32, gradients returned in bf16."""
    case = Case(seed=9)
    h, W = case.h.detach().bfloat16().requires_grad_(), case.W.detach().bfloat16().requires_grad_()
    pol = VocabHead(h, W)
    rm, ref = (VocabHead(x.hidden.bfloat16(), x.weight.bfloat16()) for x in (case.rm, case.ref))
    w = case.weights().float()
    loss, _ = lco_chunked_loss(pol, kind="kld", beta=1.0, weights=w, chunk_size=4, rm=rm, ref=ref)
    assert loss.dtype == torch.float32
    loss.backward()
    assert h.grad.dtype == torch.bfloat16 and W.grad.dtype == torch.bfloat16
    # reference in float64 from the same (rounded) inputs
    case.h, case.W, case.b = h.detach().double().requires_grad_(), W.detach().double().requires_grad_(), None
    case.rm, case.ref = (VocabHead(x.hidden.double(), x.weight.double()) for x in (rm, ref))
    want = case.reference("kld", "dpo", beta=1.0, use_old=False)
    want.backward()
    torch.testing.assert_close(loss.double(), want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(h.grad.double(), case.h.grad, atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(W.grad.double(), case.W.grad, atol=2e-2, rtol=5e-2)


# --------------------------------------------------------------------------- engine + stats


def test_generic_token_loss_cross_entropy():
    """The engine is loss-agnostic: weighted CE equals F.cross_entropy on materialized logits."""
    case = Case(seed=10)

    def ce(z, labels):
        return F.cross_entropy(z, labels, reduction="none")

    w = case.weights()
    loss, _ = chunked_token_loss(case.policy, ce, w, 5, targets=lambda sl: {"labels": case.ids[sl]})
    ref = (F.cross_entropy(case.logits(), case.ids, reduction="none") * w).sum()
    assert_same_loss_and_grads(case, loss, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_stats_equal_naive(kind):
    case = Case(seed=13)
    _, stats = case.chunked(kind, "dpo", beta=0.7, use_old=True, chunk_size=4, stats=True)
    # naive: per-token logit gradients of the unreduced loss via autograd on materialized logits
    z = case.logits().detach().requires_grad_()
    z_old = case.old.logits(slice(None))
    raw = torch.log_softmax(case.rm.logits(slice(None)), -1) - torch.log_softmax(case.ref.logits(slice(None)), -1)
    adv = dense_advantage(raw)
    per_token = torch.stack([lco_loss(z[i], z_old[i], adv[i], 0.7, kind) for i in range(N)])
    (grad,) = torch.autograd.grad(per_token.sum(), z)
    z = z.detach()
    logp = torch.log_softmax(z, -1)
    m = case.mask.to(D)
    mean = lambda x: ((x * m).sum() / m.sum()).item()
    g_abs = grad.abs()
    g_sampled = g_abs.gather(-1, case.ids[:, None]).squeeze(-1)
    expected = {
        "entropy": mean(-(logp.exp() * logp).sum(-1)),
        "sampled_prob": mean(logp.exp().gather(-1, case.ids[:, None]).squeeze(-1)),
        "logit_grad_sampled": mean(g_sampled),
        "logit_grad_other": mean((g_abs.sum(-1) - g_sampled) / (V - 1)),
    }
    assert stats.keys() == expected.keys()
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-10, abs=1e-13), key


def test_stats_without_sampled_ids_and_without_grad():
    case = Case(seed=14)
    with torch.no_grad():
        _, stats = chunked_token_loss(case.policy, lambda z: z.mean(-1), case.weights(), 4, stats=True)
    assert set(stats) == {"entropy"}
    ent, _ = chunked_entropy_and_logprobs(case.policy, case.ids, 4)
    assert stats["entropy"] == pytest.approx(((ent * case.mask).sum() / case.mask.sum()).item(), rel=1e-12)


def test_validation_errors():
    case = Case(seed=15)
    small = VocabHead(case.rm.hidden, case.rm.weight[:-1])
    with pytest.raises(ValueError, match="share a tokenizer"):
        lco_chunked_loss(case.policy, kind="kld", beta=1.0, weights=case.weights(), chunk_size=4, rm=small, ref=case.ref)
    with pytest.raises(ValueError, match="needs ref"):
        lco_chunked_loss(case.policy, kind="kld", beta=1.0, weights=case.weights(), chunk_size=4, rm=case.rm)
    with pytest.raises(ValueError, match="needs sampled_ids, seq_adv"):
        lco_chunked_loss(case.policy, kind="kld", beta=1.0, weights=case.weights(), chunk_size=4, advantage="sparse")
    with pytest.raises(ValueError, match="beta"):
        lco_chunked_loss(case.policy, kind="kld", beta=0.0, weights=case.weights(), chunk_size=4, advantage="logprob", rm=case.rm)
    with pytest.raises(ValueError, match="weights"):
        chunked_token_loss(case.policy, lambda z: z.mean(-1), torch.ones(N + 1, dtype=D), 4)
    with pytest.raises(ValueError, match=r"\[N, H\]"):
        VocabHead(torch.zeros(2, 3, H), case.W)


# --------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("chunk_size", [3, 13, 100])
def test_selective_logprobs_values_and_grads(chunk_size):
    case = Case(seed=16)
    got = chunked_selective_logprobs(case.policy, case.ids, chunk_size)
    want = torch.log_softmax(case.logits(), -1).gather(-1, case.ids[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)

    # an arbitrary downstream loss (PPO-like ratio × advantage) exercises grad_output per token
    def downstream(lp):
        return -(torch.exp(lp - lp.detach()) * case.seq_adv * case.mask).sum() + (lp**2).mean()

    g_got = torch.autograd.grad(downstream(got), case.params())
    g_want = torch.autograd.grad(downstream(want), case.params())
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_selective_logprobs_frozen_weight():
    case = Case(seed=17, bias=False)
    case.W.requires_grad_(False)
    got = chunked_selective_logprobs(case.policy, case.ids, 4)
    want = torch.log_softmax(case.logits(), -1).gather(-1, case.ids[:, None]).squeeze(-1)
    (a,) = torch.autograd.grad(got.sum(), case.h)
    (b,) = torch.autograd.grad(want.sum(), case.h)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_entropy_and_logprobs():
    case = Case(seed=18)
    ent, lp = chunked_entropy_and_logprobs(case.policy, case.ids, 5)
    logp = torch.log_softmax(case.logits().detach(), -1)
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1))
    torch.testing.assert_close(lp, logp.gather(-1, case.ids[:, None]).squeeze(-1))
    assert not ent.requires_grad and not lp.requires_grad
