"""Reference LCO losses (eqs. 6–10), their logit gradients (eqs. 44, 47), convexity (Lemma 4.6)
and the advantage helpers (§4.2, §4.4)."""

import math

import pytest
import torch

from lco_cli.losses.lco import (
    LCOKLD,
    LCOLCH,
    LCOMSE,
    OBJECTIVES,
    dense_advantage,
    get_objective,
    lco_loss,
    log_cosh,
    optimal_logits,
    select_beta,
    sparse_advantage,
)

D = torch.float64
KINDS = ["kld", "mse", "lch"]


def t(*rows):
    """t([a, b]) is a vector, t([a, b], [c, d]) a matrix, t(a, b) a vector."""
    return torch.tensor(rows[0] if len(rows) == 1 else rows, dtype=D)


# --------------------------------------------------------------------------- hand-derived values
# One token, V = 3:  z = [0, 1, 2],  z_old = [0, 0, 0],  A = [2, 0, -2],  β = 2
#   z* = z_old + A/β = [1, 0, -1]          (eq. 7)
#   z − z* = [-1, 1, 3]
Z, Z_OLD, ADV, BETA = t([0.0, 1.0, 2.0]), t([0.0, 0.0, 0.0]), t([2.0, 0.0, -2.0]), 2.0


def test_mse_hand_value():
    # ((-1)² + 1² + 3²) / 3 = 11/3
    assert lco_loss(Z, Z_OLD, ADV, BETA, "mse").item() == pytest.approx(11 / 3, abs=1e-14)


def test_lch_hand_value():
    # (log cosh(-1) + log cosh(1) + log cosh(3)) / 3
    expected = (2 * math.log(math.cosh(1.0)) + math.log(math.cosh(3.0))) / 3
    assert lco_loss(Z, Z_OLD, ADV, BETA, "lch").item() == pytest.approx(expected, abs=1e-14)


def test_kld_hand_value():
    # log π*_i = z*_i − log(e¹ + e⁰ + e⁻¹);  log π_i = z_i − log(e⁰ + e¹ + e²)
    lse_star = math.log(math.e + 1 + 1 / math.e)
    lse = math.log(1 + math.e + math.e**2)
    log_p_star = [1 - lse_star, 0 - lse_star, -1 - lse_star]
    log_p = [0 - lse, 1 - lse, 2 - lse]
    expected = sum(math.exp(a) * (a - b) for a, b in zip(log_p_star, log_p))
    assert lco_loss(Z, Z_OLD, ADV, BETA, "kld").item() == pytest.approx(expected, abs=1e-14)


def test_kld_zero_at_optimum_and_shift_invariant():
    z_star = optimal_logits(Z_OLD, ADV, BETA)
    assert lco_loss(z_star + 5.0, Z_OLD, ADV, BETA, "kld").item() == pytest.approx(0.0, abs=1e-14)


def test_mask_means_over_masked_tokens_only():
    # token 0 is the hand example (MSE 11/3); token 1: z − z* = [2, 2, 2] → MSE 4; token 2 masked out.
    z = torch.stack([Z, t([3.0, 2.0, 1.0]), t([100.0, -100.0, 0.0])])
    z_old = torch.zeros(3, 3, dtype=D)
    adv = torch.stack([ADV, ADV, ADV])
    mask = torch.tensor([True, True, False])
    assert lco_loss(z, z_old, adv, BETA, "mse", mask).item() == pytest.approx((11 / 3 + 4) / 2, abs=1e-14)
    # No mask = all tokens.
    full = lco_loss(z[:2], z_old[:2], adv[:2], BETA, "mse")
    assert full.item() == pytest.approx((11 / 3 + 4) / 2, abs=1e-14)
    # Empty mask: 0, not nan.
    assert lco_loss(z, z_old, adv, BETA, "mse", torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_per_token_beta():
    # token 0 with β=2 (hand example, 11/3); token 1 same logits with β=1: z* = [2, 0, -2],
    # z − z* = [-2, 1, 4] → (4 + 1 + 16)/3 = 7.
    z, z_old, adv = torch.stack([Z, Z]), torch.zeros(2, 3, dtype=D), torch.stack([ADV, ADV])
    beta = torch.tensor([2.0, 1.0], dtype=D)
    assert lco_loss(z, z_old, adv, beta, "mse").item() == pytest.approx((11 / 3 + 7) / 2, abs=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_shapes_and_per_token_beta_match_loop(kind):
    g = torch.Generator().manual_seed(0)
    z, z_old, adv = (torch.randn(2, 3, 5, generator=g, dtype=D) for _ in range(3))
    beta = torch.rand(2, 3, generator=g, dtype=D) + 0.5
    mask = torch.tensor([[True, False, True], [True, True, False]])
    got = lco_loss(z, z_old, adv, beta, kind, mask)
    per_tok = [
        lco_loss(z[i, j], z_old[i, j], adv[i, j], beta[i, j].item(), kind) for i in range(2) for j in range(3) if mask[i, j]
    ]
    assert got.item() == pytest.approx(torch.stack(per_tok).mean().item(), abs=1e-13)


def test_select_beta_for_negative_sampled_advantage():
    sampled_adv = t([0.5, -0.1, 0.0, -3.0])
    torch.testing.assert_close(select_beta(1.0, 4.0, sampled_adv), t([1.0, 4.0, 1.0, 4.0]))
    per_token = t([1.0, 2.0, 3.0, 5.0])
    torch.testing.assert_close(select_beta(per_token, 4.0, sampled_adv), t([1.0, 4.0, 3.0, 4.0]))
    assert select_beta(0.7, None, sampled_adv) == 0.7


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown LCO objective"):
        lco_loss(Z, Z_OLD, ADV, BETA, "ppo")
    assert set(OBJECTIVES) == {"kld", "mse", "lch"}
    assert isinstance(get_objective("kld"), LCOKLD)


# --------------------------------------------------------------------------- logit gradients


def _random_case(seed, n=6, V=9):
    g = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(n, V, generator=g, dtype=D)).requires_grad_()
    z_old = 3 * torch.randn(n, V, generator=g, dtype=D)
    adv = torch.randn(n, V, generator=g, dtype=D)
    beta = torch.rand(n, generator=g, dtype=D) + 0.5
    mask = torch.rand(n, generator=g) > 0.4
    mask[0] = True
    return z, z_old, adv, beta, mask


def _closed_form(kind, z, z_star):
    V = z.shape[-1]
    if kind == "mse":
        return 2 * (z - z_star) / V
    if kind == "lch":
        return torch.tanh(z - z_star) / V  # eq. 44
    return torch.softmax(z, -1) - torch.softmax(z_star, -1)  # eq. 47: π_θ − π*


@pytest.mark.parametrize("kind", KINDS)
def test_autograd_logit_grad_matches_paper(kind):
    z, z_old, adv, beta, mask = _random_case(1)
    (grad,) = torch.autograd.grad(lco_loss(z, z_old, adv, beta, kind, mask), z)
    z_star = z_old + adv / beta[:, None]
    # mean over masked tokens ⇒ each masked token's gradient is divided by their count
    expected = _closed_form(kind, z.detach(), z_star) * mask[:, None] / mask.sum()
    torch.testing.assert_close(grad, expected, atol=1e-13, rtol=1e-10)
    # ... and the objective's own closed form agrees
    obj = OBJECTIVES[kind]()
    torch.testing.assert_close(obj.logit_grad(z.detach(), z_star), _closed_form(kind, z.detach(), z_star))


@pytest.mark.parametrize("kind", KINDS)
def test_fused_loss_and_grad_match_autograd(kind):
    """``loss_and_grad`` (used by the chunked engine) == token_loss + autograd, also for z* = −inf."""
    obj = OBJECTIVES[kind]()
    z, z_old, adv, beta, _ = _random_case(2)
    z_star = optimal_logits(z_old, adv, beta)
    if kind == "kld":
        z_star[0, :3] = -torch.inf  # masked target logits: π* = 0 there
    loss, grad = obj.loss_and_grad(z, z_star)
    want = obj.token_loss(z, z_star)
    (want_grad,) = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(loss, want.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad, want_grad, atol=1e-13, rtol=1e-10)
    assert not loss.requires_grad and obj.loss_and_grad(z, z_star, need_grad=False)[1] is None


@pytest.mark.parametrize("kind", KINDS)
def test_logits_hessian_psd(kind):
    """Lemma 4.6: every LCO loss is convex in the logits (Hessian PSD)."""
    obj = OBJECTIVES[kind]()
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        z = 4 * torch.randn(7, generator=g, dtype=D)
        z_star = 4 * torch.randn(7, generator=g, dtype=D)
        hess = torch.autograd.functional.hessian(lambda x, z_star=z_star: obj.token_loss(x, z_star), z)
        torch.testing.assert_close(hess, hess.T)
        assert torch.linalg.eigvalsh(hess).min().item() >= -1e-10
        if kind == "mse":  # (2/|V|) I: strongly convex
            torch.testing.assert_close(hess, 2 / 7 * torch.eye(7, dtype=D))
        if kind == "lch":  # diag(sech²(z − z*))/|V|
            torch.testing.assert_close(hess, torch.diag(torch.cosh(z - z_star).pow(-2) / 7))
        if kind == "kld":  # diag(π) − ππᵀ
            p = torch.softmax(z, -1)
            torch.testing.assert_close(hess, torch.diag(p) - torch.outer(p, p))


def test_log_cosh_stable_and_grad_is_tanh():
    x = torch.tensor([-1000.0, -20.0, -1e-3, 0.0, 1e-3, 0.5, 20.0, 1000.0], dtype=D, requires_grad=True)
    y = log_cosh(x)
    assert torch.isfinite(y).all()
    assert y[0].item() == pytest.approx(1000 - math.log(2), abs=1e-12)
    assert y[3].item() == 0.0
    for xi, yi in zip(x[1:-1].tolist(), y[1:-1].tolist()):
        assert yi == pytest.approx(math.log(math.cosh(xi)), abs=1e-13)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.tanh(x.detach()))


def test_kld_handles_masked_target_logits():
    z = torch.zeros(4, dtype=D, requires_grad=True)
    z_star = t([0.0, -math.inf, 1.0, -math.inf])
    loss = LCOKLD().token_loss(z, z_star)
    (g,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    torch.testing.assert_close(g, torch.softmax(z.detach(), -1) - torch.softmax(z_star, -1))


def test_objective_classes_document_their_equation():
    for cls, eq in ((LCOMSE, "(8)"), (LCOLCH, "(9)"), (LCOKLD, "(10)")):
        assert eq in cls.__doc__


# --------------------------------------------------------------------------- advantages


def test_centering_leaves_pi_star_unchanged():
    g = torch.Generator().manual_seed(3)
    z_old = torch.randn(5, 13, generator=g, dtype=D)
    raw = torch.log_softmax(torch.randn(5, 13, generator=g, dtype=D), -1)  # all negative
    centered = dense_advantage(raw)
    torch.testing.assert_close(centered.mean(-1), torch.zeros(5, dtype=D))
    for beta in (0.3, 1.0):
        torch.testing.assert_close(torch.softmax(z_old + centered / beta, -1), torch.softmax(z_old + raw / beta, -1))
    # the tightest target for MSE/LCH (§4.4): centering minimizes ‖A + C‖
    assert (centered.norm(dim=-1) <= raw.norm(dim=-1)).all()
    assert torch.equal(dense_advantage(raw, center=False), raw)


def test_dense_advantage_does_not_modify_input():
    raw = t([1.0, 2.0, 3.0])
    dense_advantage(raw, clip=0.5)
    assert torch.equal(raw, t([1.0, 2.0, 3.0]))


def test_clip_after_centering():
    # A = [0, −10, −20] → centered (mean −10) [10, 0, −10] → clip 5 → [5, 0, −5]
    # (clipping first would give [0, −5, −5]: the order matters and is documented)
    got = dense_advantage(t([0.0, -10.0, -20.0]), clip=5.0)
    torch.testing.assert_close(got, t([5.0, 0.0, -5.0]))
    got = dense_advantage(t([0.0, -10.0, -20.0]), center=False, clip=5.0)
    torch.testing.assert_close(got, t([0.0, -5.0, -5.0]))


def test_topk_support():
    # old logits pick tokens 1 and 3 as the top-2 support
    old = t([0.0, 5.0, 1.0, 4.0, -2.0])
    raw = t([-7.0, -1.0, -3.0, -3.0, -math.inf])  # −inf outside the support must not leak
    got = dense_advantage(raw, topk=2, old_logits=old)
    # support mean = (−1 − 3)/2 = −2 → [.., 1, .., −1, ..], zero elsewhere
    torch.testing.assert_close(got, t([0.0, 1.0, 0.0, -1.0, 0.0]))
    got = dense_advantage(raw, topk=2, old_logits=old, center=False, clip=2.0)
    torch.testing.assert_close(got, t([0.0, -1.0, 0.0, -2.0, 0.0]))
    # batched: each token gets its own support
    old2 = torch.stack([old, -old])
    raw2 = torch.stack([raw.nan_to_num(neginf=0.0)] * 2)
    got2 = dense_advantage(raw2, topk=2, old_logits=old2)
    # token 1: −old = [0, −5, −1, −4, 2] → support {4, 0}, values {0, −7}, mean −3.5
    torch.testing.assert_close(got2, t([0.0, 1.0, 0.0, -1.0, 0.0], [-3.5, 0.0, 0.0, 0.0, 3.5]))
    with pytest.raises(ValueError, match="old_logits"):
        dense_advantage(raw, topk=2)


def test_sparse_advantage_is_one_hot_times_sequence_advantage():
    got = sparse_advantage(torch.tensor([2, 0]), t(1.5, -1.0), 4)
    torch.testing.assert_close(got, t([0.0, 0.0, 1.5, 0.0], [-1.0, 0.0, 0.0, 0.0]))
    # eq. 11 with centering: the sampled token's relative advantage is kept
    centered = dense_advantage(got)
    torch.testing.assert_close(centered[0], t([-0.375, -0.375, 1.125, -0.375]))
