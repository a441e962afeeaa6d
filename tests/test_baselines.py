"""Hand-derived checks of the baseline losses in ``lco_cli.losses`` (policy_gradient, distillation, estimators).

All tensors are float64 so the written-out arithmetic can be compared tightly. Clipping is
checked on both branches (A > 0 above 1 + ε, A < 0 below 1 − ε: zero gradient) and in the
active region (including A > 0 below 1 − ε and A < 0 above 1 + ε, which PPO does NOT clip).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from lco_cli.losses.base import BaselineLoss
from lco_cli.losses.distillation import GKD, MiniLLM, gkd_token_loss, minillm_long_term_rewards, minillm_mix_weights, minillm_token_loss
from lco_cli.losses.estimators import (dynamic_sampling_keep, gae, group_normalize, kl_penalty_rewards, overlong_reward_shaping,
                                       reinforce_baseline)
from lco_cli.losses.policy_gradient import DAPO, GRPO, GSPO, PPO, Reinforce, clipped_surrogate, k3_kl
from lco_cli.losses.reductions import masked_mean, whiten
from lco_cli.rl.registry import algorithms, update_class
from lco_cli.errors import ConfigError

D = torch.float64
LN2 = math.log(2.0)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def policy_from_ratios(ratios, old=-0.5):
    """``(logprobs (leaf, requires grad), old_logprobs)`` with exp(logprobs − old) = ratios."""
    r = t(ratios)
    old_lp = torch.full_like(r, old)
    lp = (old_lp + torch.log(r)).requires_grad_(True)
    return lp, old_lp


def approx(x, rel=1e-9, abs=1e-12):
    return pytest.approx(x, rel=rel, abs=abs)


# =========================================================================== advantage helpers


def test_reinforce_baseline_batch_mean_and_rloo():
    # group_size 1: baseline = batch mean 2 → [1−2, 2−2, 3−2]
    assert reinforce_baseline(t([1.0, 2.0, 3.0]), 1).tolist() == approx([-1.0, 0.0, 1.0])
    # RLOO, G = 4, group [1,0,0,0]: A_0 = 1 − (0+0+0)/3 = 1 ; A_j = 0 − (1+0+0)/3 = −1/3
    # second group [2,4,6,8]: A_0 = 2 − (4+6+8)/3 = −4 ; A_3 = 8 − (2+4+6)/3 = 4
    out = reinforce_baseline(t([1, 0, 0, 0, 2, 4, 6, 8]), 4)
    assert out.tolist() == approx([1.0, -1 / 3, -1 / 3, -1 / 3, -4.0, -4 / 3, 4 / 3, 4.0])


def test_group_normalize_grpo_and_dr_grpo():
    # group [1,0,0,0]: mean 0.25; unbiased var = (0.75² + 3·0.25²)/3 = 0.75/3 = 0.25 → std 0.5
    # A = (r − 0.25)/(0.5 + 1e-4); constant group [2,2,2,2] → A = 0 (std 0, no NaN)
    out = group_normalize(t([1, 0, 0, 0, 2, 2, 2, 2]), 4)
    s = 0.5 + 1e-4
    assert out.tolist() == approx([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0, 0, 0, 0])
    out = group_normalize(t([1, 0, 0, 0, 2, 2, 2, 2]), 4, scale=False)
    assert out.tolist() == approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        group_normalize(t([1.0, 2.0]), 1)
    with pytest.raises(ValueError):
        group_normalize(t([1.0, 2.0, 3.0]), 2)


def test_whiten_masked_unbiased_like_trl():
    # valid [1,2,3]: mean 2, unbiased var (1+0+1)/2 = 1 → [−1, 0, 1]; pad (100) excluded and zeroed
    out = whiten(t([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]))
    k = 1 / math.sqrt(1 + 1e-8)
    assert out[0].tolist() == approx([-k, 0.0, k, 0.0])
    out = whiten(t([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]), shift_mean=False)
    assert out[0, :3].tolist() == approx([-k + 2, 2.0, k + 2])


def test_gae_hand_computed_right_padded():
    # row 0, mask [1,1,0], γ=1, λ=0.5, pad entries are garbage and must be ignored:
    #   t=1 (last real): δ1 = r1 + γ·0 − V1 = 1 − 0.2 = 0.8        A1 = 0.8
    #   t=0:             δ0 = r0 + γ·V1 − V0 = 0 + 0.2 − 0.5 = −0.3  A0 = −0.3 + 0.5·0.8 = 0.1
    #   returns = A + V = [0.6, 1.0, 0]
    # row 1, full, γ=1, λ=0.5: r=[1,0,2], V=[1,1,1]
    #   δ2 = 2 − 1 = 1 → A2 = 1 ; δ1 = 0 + 1 − 1 = 0 → A1 = 0 + 0.5·1 = 0.5
    #   δ0 = 1 + 1 − 1 = 1 → A0 = 1 + 0.5·0.5 = 1.25 ; returns = [2.25, 1.5, 2]
    rewards = t([[0.0, 1.0, 5.0], [1.0, 0.0, 2.0]])
    values = t([[0.5, 0.2, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert adv.tolist() == [approx([0.1, 0.8, 0.0]), approx([1.25, 0.5, 1.0])]
    assert ret.tolist() == [approx([0.6, 1.0, 0.0]), approx([2.25, 1.5, 2.0])]
    # γ = 0.9, λ = 1, row 0: A1 = 1 − 0.2 = 0.8 ; A0 = (0 + 0.9·0.2 − 0.5) + 0.9·0.8 = −0.32 + 0.72 = 0.4
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert adv[0].tolist() == approx([0.4, 0.8, 0.0])


def test_kl_penalty_rewards():
    # r − 0.05·(old − ref): old − ref = [0.5, 0, 0.5] → [−0.025, 0, 1 − 0.025]
    out = kl_penalty_rewards(t([[0.0, 0.0, 1.0]]), t([[-1.0, -2.0, -0.5]]), t([[-1.5, -2.0, -1.0]]))
    assert out[0].tolist() == approx([-0.025, 0.0, 0.975])


def test_overlong_reward_shaping_each_branch():
    # L_max = 10, L_cache = 4: L ≤ 6 → 0 ; 6 < L ≤ 10 → (6 − L)/4 ; L > 10 → −1
    out = overlong_reward_shaping(torch.tensor([3, 6, 7, 9, 10, 11, 50]), max_len=10, cache=4)
    assert out.tolist() == approx([0.0, 0.0, -0.25, -0.75, -1.0, -1.0, -1.0])
    # cache = 0: hard cutoff, no ramp and no division by zero
    out = overlong_reward_shaping(torch.tensor([10, 11]), max_len=10, cache=0)
    assert out.tolist() == [0.0, -1.0]
    # DAPO defaults: L_max = 20480, L_cache = 4096 → ramp starts after 16384
    assert overlong_reward_shaping(torch.tensor([16384, 18432])).tolist() == approx([0.0, -0.5])


def test_dynamic_sampling_keep():
    rewards = t([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    assert dynamic_sampling_keep(rewards, 4).tolist() == [False, True, False]
    keep = DAPO().keep(rewards)
    assert keep.tolist() == [False] * 4 + [True] * 4 + [False] * 4
    assert DAPO(dynamic_sampling=False).keep(rewards).all()


# =========================================================================== clipping building block


def test_clipped_surrogate_branches_and_gradients():
    # ε = 0.2. ratios / advantages and the regime of each token:
    #   r=1.5, A=+1 → min(1.5, 1.2)=1.2  clipped (high)  ℓ=−1.2  ∂ℓ/∂logπ = 0
    #   r=0.5, A=−1 → min(−0.5,−0.8)=−0.8 clipped (low)  ℓ=+0.8  ∂ℓ/∂logπ = 0
    #   r=1.1, A=+2 → 2.2 active                          ℓ=−2.2  ∂ℓ/∂logπ = −A·r = −2.2
    #   r=0.7, A=+1 → min(0.7, 0.8)=0.7 active (A>0 is not clipped below) ℓ=−0.7 grad −0.7
    #   r=1.5, A=−1 → min(−1.5,−1.2)=−1.5 active (A<0 is not clipped above) ℓ=+1.5 grad +1.5
    lp, old = policy_from_ratios([1.5, 0.5, 1.1, 0.7, 1.5])
    adv = t([1.0, -1.0, 2.0, 1.0, -1.0])
    loss = clipped_surrogate(torch.exp(lp - old), adv, 0.2, 0.2)
    assert loss.tolist() == approx([-1.2, 0.8, -2.2, -0.7, 1.5])
    loss.sum().backward()
    assert lp.grad.tolist() == approx([0.0, 0.0, -2.2, -0.7, 1.5])


def test_k3_kl_value_and_gradient():
    # d = ref − logπ = ln 2: k3 = 2 − ln2 − 1 = 0.3068528… ; ∂k3/∂logπ = 1 − e^d = −1
    lp = t([-1.0, -2.0]).requires_grad_(True)
    ref = t([-1.0 + LN2, -2.0])
    kl = k3_kl(lp, ref)
    assert kl.tolist() == approx([1.0 - LN2, 0.0])
    kl.sum().backward()
    assert lp.grad.tolist() == approx([-1.0, 0.0])


# =========================================================================== REINFORCE


def test_reinforce_loss_and_gradient():
    # row 0: A=2, Σ logπ = −1−2−3 = −6 → −A·Σ = 12 ; row 1: A=−1, Σ = −1 (pad 9 masked) → −1
    # L = (12 − 1)/2 = 5.5 ; ∂L/∂logπ = −A/B = [−1,−1,−1], [0.5, 0.5, 0 (pad)]
    lp = t([[-1.0, -2.0, -3.0], [-0.5, -0.5, 9.0]]).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, diag = Reinforce().loss(logprobs=lp, advantages=t([2.0, -1.0]), mask=mask)
    assert loss.item() == approx(5.5)
    loss.backward()
    assert lp.grad.tolist() == [approx([-1.0, -1.0, -1.0]), approx([0.5, 0.5, 0.0])]
    assert "ratio_mean" not in diag and diag["loss"] == approx(5.5)
    # token-level advantages give the same result when broadcast by hand
    loss2, _ = Reinforce().loss(logprobs=lp, advantages=t([[2.0] * 3, [-1.0] * 3]), mask=mask)
    assert loss2.item() == approx(5.5)
    assert Reinforce(group_size=2).advantages(t([1.0, 0.0, 3.0, 3.0])).tolist() == approx([1.0, -1.0, 0, 0])


# =========================================================================== PPO


def _ppo_batch():
    lp, old = policy_from_ratios([[1.5, 0.5, 1.1, 0.7, 1.5]])
    adv = t([[1.0, -1.0, 2.0, 1.0, -1.0]])
    values = t([[0.5, -0.1, 0.3, 0.0, 0.1]]).requires_grad_(True)
    old_values = torch.zeros(1, 5, dtype=D)
    returns = t([[1.0, 1.0, -1.0, 0.0, 0.1]])
    return lp, old, adv, values, old_values, returns


def test_ppo_loss_hand_computed():
    lp, old, adv, values, old_values, returns = _ppo_batch()
    mask = torch.ones(1, 5, dtype=torch.bool)
    loss, diag = PPO().loss(
        logprobs=lp, old_logprobs=old, advantages=adv, mask=mask,
        values=values, old_values=old_values, returns=returns,
    )
    # policy: per-token losses [−1.2, 0.8, −2.2, −0.7, 1.5] (see clipped test) → mean −1.8/5 = −0.36
    # value, clip ±0.2 around V_old = 0:
    #   t0 V=0.5→0.2: (0.5−1)²=0.25, (0.2−1)²=0.64 → 0.64 (clipped branch wins → value_clipfrac)
    #   t1 V=−0.1 in range: (−1.1)² = 1.21
    #   t2 V=0.3→0.2: (1.3)²=1.69, (1.2)²=1.44 → 1.69
    #   t3, t4: 0
    #   vf = ½·(0.64+1.21+1.69)/5 = ½·0.708 = 0.354 ; value_clipfrac = 1/5
    # total = −0.36 + 0.1·0.354 = −0.3246
    assert diag["pg_loss"] == approx(-0.36)
    assert diag["value_loss"] == approx(0.354)
    assert loss.item() == approx(-0.3246)
    assert diag["value_clipfrac"] == approx(0.2)
    assert diag["clipfrac"] == approx(0.4)
    assert diag["clipfrac_low"] == approx(0.2)
    assert diag["clipfrac_high"] == approx(0.2)
    assert diag["ratio_mean"] == approx(5.3 / 5)
    assert diag["ratio_min"] == approx(0.5) and diag["ratio_max"] == approx(1.5)
    logr = [math.log(x) for x in (1.5, 0.5, 1.1, 0.7, 1.5)]
    assert diag["approx_kl"] == approx(0.5 * sum(x * x for x in logr) / 5)
    # explained variance 1 − Var[R−V]/Var[R] (biased):
    #   R−V = [0.5, 1.1, −1.3, 0, 0], mean 0.06 → Var = (0.1936+1.0816+1.8496+0.0036+0.0036)/5 = 0.6264
    #   R: mean 0.22 → Var = (0.6084+0.6084+1.4884+0.0484+0.0144)/5 = 0.5536
    assert diag["explained_variance"] == approx(1 - 0.6264 / 0.5536)
    loss.backward()
    # ∂/∂logπ = (1/5)·(−A·r) on active tokens, 0 on the two clipped ones
    assert lp.grad[0].tolist() == approx([0.0, 0.0, -2.2 / 5, -0.7 / 5, 1.5 / 5])
    # ∂/∂V = vf_coef·½·2(V − R)/5 on unclipped-max tokens; t0 uses the clipped value → 0
    #   t1: 0.1·(−1.1)/5 = −0.022 ; t2: 0.1·(1.3)/5 = 0.026 ; t4: 0
    assert values.grad[0].tolist() == approx([0.0, -0.022, 0.026, 0.0, 0.0])


def test_ppo_masks_padding_and_broadcasts_sequence_advantages():
    lp, old = policy_from_ratios([[1.1, 1.1, 50.0]])
    mask = torch.tensor([[1, 1, 0]])
    z = torch.zeros(1, 3, dtype=D)
    loss, diag = PPO(vf_coef=0.0).loss(
        logprobs=lp, old_logprobs=old, advantages=t([1.0]), mask=mask, values=z, old_values=z, returns=z
    )
    # both real tokens active: −1.1 each → mean −1.1 ; the r=50 pad does not count
    assert loss.item() == approx(-1.1)
    assert diag["ratio_max"] == approx(1.1)
    loss.backward()
    assert lp.grad[0].tolist() == approx([-0.55, -0.55, 0.0])


def test_ppo_advantages_and_kl_reward_helpers():
    algo = PPO(lam=0.5)
    rewards = t([[0.0, 1.0, 5.0], [1.0, 0.0, 2.0]])
    values = t([[0.5, 0.2, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv, ret = algo.advantages(rewards, values, mask)
    raw, raw_ret = gae(rewards, values, mask, 1.0, 0.5)
    assert torch.allclose(adv, whiten(raw, mask)) and torch.equal(ret, raw_ret)
    shaped = algo.shaped_rewards(rewards, t([[-1.0] * 3] * 2), t([[-2.0] * 3] * 2), mask)
    assert shaped[0].tolist() == approx([-0.05, 0.95, 0.0])


# =========================================================================== GRPO


def _grpo_batch():
    # row 0 (A=+1), ratios [1.0, 1.3, 0.9]: t0 active ℓ=−1 ; t1 clipped at 1.2 ℓ=−1.2 ; t2 active ℓ=−0.9
    # row 1 (A=−1), ratios [0.7, 1.0, pad]: t0 clipped at 0.8 ℓ=+0.8 ; t1 active ℓ=+1.0
    lp, old = policy_from_ratios([[1.0, 1.3, 0.9], [0.7, 1.0, 3.0]])
    d = torch.zeros(2, 3, dtype=D)
    d[0, 0] = LN2  # ref − logπ: k3 = 2 − ln2 − 1 on that token, 0 elsewhere
    ref = lp.detach() + d
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return lp, old, ref, mask


K3_LN2 = 1.0 - LN2  # e^{ln2} − ln2 − 1


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        # grpo: row means (−1+0.04·k3 −1.2 −0.9)/3 and (0.8+1)/2, then batch mean
        ("grpo", ((-1 + 0.04 * K3_LN2 - 1.2 - 0.9) / 3 + 0.9) / 2),
        # bnpo: Σ over 5 real tokens / 5
        ("bnpo", (-1 + 0.04 * K3_LN2 - 1.2 - 0.9 + 0.8 + 1.0) / 5),
        # dr_grpo: Σ / (B · T) = Σ / 6
        ("dr_grpo", (-1 + 0.04 * K3_LN2 - 1.2 - 0.9 + 0.8 + 1.0) / 6),
    ],
)
def test_grpo_loss_types(loss_type, expected):
    lp, old, ref, mask = _grpo_batch()
    loss, diag = GRPO(loss_type=loss_type).loss(
        logprobs=lp, old_logprobs=old, advantages=t([1.0, -1.0]), mask=mask, ref_logprobs=ref
    )
    assert loss.item() == approx(expected)
    assert diag["clipfrac_high"] == approx(1 / 5) and diag["clipfrac_low"] == approx(1 / 5)
    assert diag["kl_ref"] == approx(K3_LN2 / 5)


def test_grpo_gradients():
    lp, old, ref, mask = _grpo_batch()
    loss, _ = GRPO().loss(logprobs=lp, old_logprobs=old, advantages=t([1.0, -1.0]), mask=mask, ref_logprobs=ref)
    loss.backward()
    # row 0 weight 1/(3·2): t0 = (−A·r + β·(1 − e^{ln2}))/6 = (−1 − 0.04)/6 ; t1 clipped and k3'=0 → 0
    #                        t2 = −0.9/6
    # row 1 weight 1/(2·2): t0 clipped → 0 ; t1 = −A·r/4 = +0.25 ; pad 0
    assert lp.grad[0].tolist() == approx([-1.04 / 6, 0.0, -0.9 / 6])
    assert lp.grad[1].tolist() == approx([0.0, 0.25, 0.0])


def test_grpo_requires_ref_when_beta_positive_and_advantages():
    lp, old, _, mask = _grpo_batch()
    with pytest.raises(ValueError):
        GRPO().loss(logprobs=lp, old_logprobs=old, advantages=t([1.0, -1.0]), mask=mask)
    loss, _ = GRPO(beta=0.0).loss(logprobs=lp, old_logprobs=old, advantages=t([1.0, -1.0]), mask=mask)
    assert loss.item() == approx(((-1 - 1.2 - 0.9) / 3 + 0.9) / 2)
    assert GRPO(group_size=2).advantages(t([1.0, 0.0])).tolist() == approx(
        [0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4)]
    )


# =========================================================================== DAPO


def test_dapo_clip_higher_token_level():
    # ε_low = 0.2, ε_high = 0.28.
    # row 0 (A=+1), r = [1.25, 1.3, 1.0]: 1.25 < 1.28 active (PPO would clip!) ℓ=−1.25 ;
    #   1.3 > 1.28 clipped ℓ=−1.28 grad 0 ; 1.0 active ℓ=−1
    # row 1 (A=−1), r = [0.75, 1.1, pad]: 0.75 < 0.8 clipped ℓ=+0.8 grad 0 ; 1.1 active ℓ=+1.1
    # token-level: (−1.25 −1.28 −1 + 0.8 + 1.1)/5 = −1.63/5 = −0.326
    lp, old = policy_from_ratios([[1.25, 1.3, 1.0], [0.75, 1.1, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, diag = DAPO().loss(logprobs=lp, old_logprobs=old, advantages=t([1.0, -1.0]), mask=mask)
    assert loss.item() == approx(-0.326)
    assert diag["clipfrac_high"] == approx(0.2) and diag["clipfrac_low"] == approx(0.2)
    loss.backward()
    assert lp.grad.tolist() == [approx([-1.25 / 5, 0.0, -1.0 / 5]), approx([0.0, 1.1 / 5, 0.0])]


def test_dapo_reward_shaping_uses_config():
    algo = DAPO(max_response_length=10, overlong_cache=4)
    out = algo.shape_rewards(t([1.0, 1.0, 0.0]), torch.tensor([5, 8, 12]))
    assert out.tolist() == approx([1.0, 0.5, -1.0])
    assert DAPO(overlong_shaping=False).shape_rewards(t([1.0]), torch.tensor([10**6])).tolist() == [1.0]


# =========================================================================== GSPO


def _gspo_batch():
    old = torch.full((2, 3), -1.0, dtype=D)
    # row 0: log-ratios [0.001, −0.002, 0.004] → mean 0.001 → s_0 = e^0.001
    # row 1: log-ratios [−0.0002, 0.0004, pad 5] → mean 0.0001 → s_1 = e^0.0001
    lr = t([[0.001, -0.002, 0.004], [-0.0002, 0.0004, 5.0]])
    lp = (old + lr).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return lp, old, mask


def test_gspo_sequence_ratio_clipping_and_gradient():
    lp, old, mask = _gspo_batch()
    s0, s1 = math.exp(0.001), math.exp(0.0001)
    # A_0 = +1: s_0 = 1.0010005 > 1 + 4e-4 → clipped: ℓ_0 = −1.0004, no gradient
    # A_1 = −1: s_1 = 1.0001 > 1 − 3e-4 → active: ℓ_1 = −min(−s_1, −clip(s_1)) = s_1
    # L = (−1.0004 + s_1)/2
    loss, diag = GSPO().loss(logprobs=lp, old_logprobs=old, advantages=t([1.0, -1.0]), mask=mask)
    assert loss.item() == approx((-1.0004 + s1) / 2)
    assert diag["ratio_max"] == approx(s0) and diag["ratio_min"] == approx(s1)
    assert diag["clipfrac"] == approx(0.5) and diag["clipfrac_high"] == approx(0.5)
    loss.backward()
    # ∂s_1/∂logπ_t = s_1/|y_1| = s_1/2, times 1/B = 1/2 → s_1/4 per real token
    assert lp.grad.tolist() == [approx([0.0, 0.0, 0.0]), approx([s1 / 4, s1 / 4, 0.0])]


def test_gspo_token_variant_same_value_token_weighted_gradient():
    lp, old, mask = _gspo_batch()
    s1 = math.exp(0.0001)
    loss_seq, _ = GSPO().loss(logprobs=lp, old_logprobs=old, advantages=t([1.0, -1.0]), mask=mask)
    loss_tok, _ = GSPO(variant="token").loss(logprobs=lp, old_logprobs=old, advantages=t([1.0, -1.0]), mask=mask)
    assert loss_tok.item() == approx(loss_seq.item())  # s_{i,t} has the value of s_i
    # token advantages on row 1: A = [−1, −3] → ℓ_t = −A_t·s_1 (active) → mean = 2·s_1
    # ∂/∂logπ_t = −A_t·s_1/|y|/B = [s_1/4, 3·s_1/4]
    adv = t([[1.0, 1.0, 1.0], [-1.0, -3.0, 0.0]])
    loss, _ = GSPO(variant="token").loss(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask)
    assert loss.item() == approx((-1.0004 + 2 * s1) / 2)
    loss.backward()
    assert lp.grad[1].tolist() == approx([s1 / 4, 3 * s1 / 4, 0.0])
    assert lp.grad[0].tolist() == approx([0.0, 0.0, 0.0])


# =========================================================================== GKD


def _two_dists():
    # P_S = [0.5, 0.5], P_T = [0.25, 0.75] given as logits (log-probs)
    s = torch.log(t([[0.5, 0.5]]))
    te = torch.log(t([[0.25, 0.75]]))
    return s, te


def test_gkd_endpoints_are_forward_and_reverse_kl():
    s, te = _two_dists()
    # β = 0 → KL(T‖S) = 0.25·ln(0.25/0.5) + 0.75·ln(0.75/0.5) = −0.25 ln2 + 0.75 ln1.5
    fkl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    # β = 1 → KL(S‖T) = 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75) = 0.5 ln2 + 0.5 ln(2/3)
    rkl = 0.5 * LN2 + 0.5 * math.log(2 / 3)
    assert fkl == approx(0.1308120, rel=1e-6) and rkl == approx(0.1438410, rel=1e-6)
    assert gkd_token_loss(s, te, beta=0.0).item() == approx(fkl)
    assert gkd_token_loss(s, te, beta=1.0).item() == approx(rkl)


def test_gkd_jsd_half_symmetric_and_interior_formula():
    s, te = _two_dists()
    # β = 0.5: M = [0.375, 0.625]
    # KL(T‖M) = 0.25 ln(0.25/0.375) + 0.75 ln(0.75/0.625) ; KL(S‖M) = 0.5 ln(0.5/0.375) + 0.5 ln(0.5/0.625)
    kl_tm = 0.25 * math.log(2 / 3) + 0.75 * math.log(1.2)
    kl_sm = 0.5 * math.log(4 / 3) + 0.5 * math.log(0.8)
    jsd = 0.5 * kl_tm + 0.5 * kl_sm
    assert jsd == approx(0.0338220, rel=1e-5)
    assert gkd_token_loss(s, te, beta=0.5).item() == approx(jsd)
    assert gkd_token_loss(te, s, beta=0.5).item() == approx(jsd)  # symmetric at β = ½
    # β = 0.1 (TRL): M = 0.1·P_T + 0.9·P_S = [0.475, 0.525]; L = 0.1·KL(T‖M) + 0.9·KL(S‖M)
    m = [0.1 * 0.25 + 0.9 * 0.5, 0.1 * 0.75 + 0.9 * 0.5]
    kl_tm = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    kl_sm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    assert gkd_token_loss(s, te, beta=0.1).item() == approx(0.1 * kl_tm + 0.9 * kl_sm)


def test_gkd_rowwise_chunks_temperature_and_zero_probs():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 7, generator=g, dtype=D)
    te = torch.randn(6, 7, generator=g, dtype=D)
    full = gkd_token_loss(s, te, beta=0.3, temperature=2.0)
    parts = torch.cat([gkd_token_loss(s[:2], te[:2], 0.3, 2.0), gkd_token_loss(s[2:], te[2:], 0.3, 2.0)])
    assert torch.allclose(full, parts)
    assert torch.allclose(full, gkd_token_loss(s / 2, te / 2, 0.3, 1.0))
    # −inf logits on both sides (e.g. padded vocab): finite value and gradient
    s2 = s.clone()
    s2[:, -1] = -math.inf
    te2 = te.clone()
    te2[:, -1] = -math.inf
    s2.requires_grad_(True)
    for beta in (0.0, 0.5, 1.0):
        out = gkd_token_loss(s2, te2, beta)
        assert torch.isfinite(out).all()
        ref = gkd_token_loss(s[:, :-1], te[:, :-1], beta)
        assert torch.allclose(out, ref)
        (g_,) = torch.autograd.grad(out.sum(), s2)
        assert torch.isfinite(g_).all()


def test_gkd_class_loss_is_token_mean():
    algo = GKD()
    assert algo.config.beta == 0.5 and algo.config.lmbda == 0.5
    per_tok = t([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    loss, diag = algo.loss(token_losses=per_tok, mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert loss.item() == approx((1 + 2 + 3 + 4 + 5) / 5)
    s, te = _two_dists()
    assert algo.token_loss(s, te).item() == approx(gkd_token_loss(s, te, 0.5))


# =========================================================================== MiniLLM


def test_minillm_single_step_is_reverse_kl_with_closed_form_gradient():
    s, te = _two_dists()
    # KL(q‖p) with q = P_S, p = P_T: 0.5 ln2 + 0.5 ln(2/3)
    assert minillm_token_loss(s, te).item() == approx(0.5 * LN2 + 0.5 * math.log(2 / 3))
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, generator=g, dtype=D, requires_grad=True)
    zt = torch.randn(4, 6, generator=g, dtype=D)
    kl = minillm_token_loss(z, zt)
    q, logq, logp = torch.softmax(z, -1), torch.log_softmax(z, -1), torch.log_softmax(zt, -1)
    assert torch.allclose(kl, (q * (logq - logp)).sum(-1))
    # ∂KL(q‖p)/∂z_i = q_i·(log q_i − log p_i − KL)
    (grad,) = torch.autograd.grad(kl.sum(), z)
    assert torch.allclose(grad, (q * (logq - logp - kl.unsqueeze(-1))).detach())
    assert torch.allclose(kl, gkd_token_loss(z, zt, beta=1.0))  # = GKD's β = 1 endpoint


def test_minillm_long_term_rewards():
    # r_t = log p − log q = [0.3, −0.6, 0.9, pad]
    stu = torch.zeros(1, 4, dtype=D)
    tea = t([[0.3, -0.6, 0.9, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # R^Norm_{t+1}: t0 mean(−0.6, 0.9) = 0.15 ; t1 mean(0.9) = 0.9 ; t2 nothing left → 0
    assert minillm_long_term_rewards(stu, tea, mask)[0].tolist() == approx([0.15, 0.9, 0.0, 0.0])
    # no normalisation: sums [0.3, 0.9, 0]
    assert minillm_long_term_rewards(stu, tea, mask, length_norm=False)[0].tolist() == approx([0.3, 0.9, 0, 0])
    # LMOps variant includes r_t: [0.6/3, 0.3/2, 0.9]
    out = minillm_long_term_rewards(stu, tea, mask, include_current=True)
    assert out[0].tolist() == approx([0.2, 0.15, 0.9, 0.0])


def test_minillm_mix_weights():
    # q_old = 0.5, p = 0.25, α = 0.2: p̃ = 0.8·0.5 + 0.2·0.25 = 0.45 → w = 0.5/0.45
    w = minillm_mix_weights(torch.log(t([0.5])), torch.log(t([0.25])), 0.2)
    assert w.item() == approx(0.5 / 0.45)
    assert minillm_mix_weights(t([-1.0]), t([-3.0]), 0.0).item() == 1.0


def test_minillm_loss_hand_computed():
    # r = 1 on both tokens; w = [1.25, 0.9]; A = [1, 1]; ε = 0.2
    #   t0: ρ = 1.25 > 1.2 → clipped ℓ = −1.2, grad 0 ; t1: ρ = 0.9 active ℓ = −0.9, grad −0.9/2
    # single-step KL = [0.1, 0.3] → mean 0.2 ; total = (−1.2 − 0.9)/2 + 0.2 = −0.85
    lp, old = policy_from_ratios([[1.0, 1.0]])
    sskl = t([[0.1, 0.3]]).requires_grad_(True)
    loss, diag = MiniLLM().loss(
        logprobs=lp, old_logprobs=old, advantages=t([[1.0, 1.0]]), mask=torch.ones(1, 2),
        single_step_kl=sskl, mix_weights=t([[1.25, 0.9]]),
    )
    assert loss.item() == approx(-0.85)
    assert diag["pg_loss"] == approx(-1.05) and diag["single_step_kl"] == approx(0.2)
    loss.backward()
    assert lp.grad.tolist() == [approx([0.0, -0.45])]
    assert sskl.grad.tolist() == [approx([0.5, 0.5])]
    with pytest.raises(ValueError):
        MiniLLM().loss(logprobs=lp, old_logprobs=old, advantages=t([1.0]), mask=torch.ones(1, 2))


# =========================================================================== configs / registry


def test_registry_and_configs():
    updates = {name: update_class(name) for name in algorithms()}
    baselines = {name: update for name, update in updates.items() if update.loss_cls is not None}
    assert set(baselines) == {"reinforce", "ppo", "grpo", "dapo", "gspo", "gkd", "minillm"}
    for name, update in baselines.items():
        cls = update.loss_cls
        assert issubclass(cls, BaselineLoss) and update.name == name
        algo = cls()
        assert isinstance(algo.config, cls.Config)
        assert cls(cls.Config()).config == algo.config
        assert re.search(r"et al\. (19|20)\d\d|Williams 1992", cls.__doc__)  # cites its paper
    assert PPO.Config().vf_coef == 0.1 and PPO.Config().cliprange_value == 0.2
    assert GRPO.Config().beta == 0.04 and GRPO.Config().epsilon == 0.2
    assert (DAPO.Config().eps_low, DAPO.Config().eps_high) == (0.2, 0.28)
    assert (GSPO.Config().eps_low, GSPO.Config().eps_high) == (3e-4, 4e-4)
    assert (MiniLLM.Config().teacher_mix_alpha, MiniLLM.Config().clip) == (0.2, 0.2)
    with pytest.raises(ConfigError) as err:
        GRPO(loss_type="nope", epsilon=1.5)
    assert len(err.value.details) == 2
    with pytest.raises(ConfigError):
        GKD(beta=1.5)
    with pytest.raises(ConfigError):
        DAPO(max_response_length=10, overlong_cache=20)
    with pytest.raises(TypeError):
        PPO(not_a_field=1)
    assert PPO(PPO.Config(), cliprange=0.1).config.cliprange == 0.1


def test_masked_mean_empty_mask_is_zero():
    assert masked_mean(t([[1.0, 2.0]]), torch.zeros(1, 2)).item() == 0.0


# =========================================================================== Lemma 4.5 (Appendix F.1)


def _ppo_token_loss(z, k, log_pi_old, adv, eps=0.2):
    """The full clipped PPO loss of one token as a function of its logits z."""
    ratio = torch.exp(torch.log_softmax(z, -1)[k] - log_pi_old)
    return clipped_surrogate(ratio, torch.tensor(adv, dtype=z.dtype), eps, eps)


@pytest.mark.parametrize("adv", [1.0, -1.0])
@pytest.mark.parametrize("V", [4, 6])
def test_lemma_4_5_ppo_not_logits_convex(adv, V):
    k = 0
    # π_old taken at z0 = 0 (uniform, π_k = 1/V < ½) and z a small step away so r ≈ 1: active region
    z0 = torch.zeros(V, dtype=D)
    log_pi_old = torch.log_softmax(z0, -1)[k]
    z = z0 + 0.05 * torch.arange(V, dtype=D) / V
    r = torch.exp(torch.log_softmax(z, -1)[k] - log_pi_old).item()
    assert 1 - 0.2 < r < 1 + 0.2
    H = torch.autograd.functional.hessian(lambda x: _ppo_token_loss(x, k, log_pi_old, adv), z)
    # closed form, eq. (40): H = (A/π_old)·[−e eᵀ + π eᵀ + e πᵀ − 2ππᵀ + diag(π)] · π_k
    # (eq. 39's bracket carries the factor π_θ(a_t); eq. 40 writes it inside the ratio r)
    pi = torch.softmax(z, -1)
    e = torch.zeros(V, dtype=D)
    e[k] = 1.0
    bracket = -torch.outer(e, e) + torch.outer(pi, e) + torch.outer(e, pi) - 2 * torch.outer(pi, pi) + torch.diag(pi)
    closed = adv * r * bracket  # (A/π_old)·π_k = A·r
    assert torch.allclose(H, closed, atol=1e-12)
    eig = torch.linalg.eigvalsh(H)
    assert eig.min() < -1e-3  # not PSD → not logits convex
    # the witness directions of eq. (42): A > 0 → v = e_k ; A < 0 → v = e_j (j ≠ k)
    v = e if adv > 0 else torch.eye(V, dtype=D)[1]
    assert (v @ H @ v).item() < 0


def test_lemma_4_5_sft_logits_convex():
    g = torch.Generator().manual_seed(3)
    for V in (4, 5, 6):
        for _ in range(5):
            z = 2.0 * torch.randn(V, generator=g, dtype=D)
            k = int(torch.randint(V, (1,), generator=g))
            H = torch.autograd.functional.hessian(lambda x: -torch.log_softmax(x, -1)[k], z)
            pi = torch.softmax(z, -1)
            assert torch.allclose(H, torch.diag(pi) - torch.outer(pi, pi), atol=1e-12)  # eq. (36)
            assert torch.linalg.eigvalsh(H).min() > -1e-12  # PSD


def test_ppo_clipped_region_has_zero_logit_hessian():
    # ratio above 1 + ε with A > 0 → clipped constant → zero gradient and Hessian in z
    V, k = 5, 0
    log_pi_old = torch.log(torch.tensor(0.1, dtype=D))
    z = torch.zeros(V, dtype=D)  # π_k = 0.2 → r = 2 > 1.2
    z.requires_grad_(True)
    (g_,) = torch.autograd.grad(_ppo_token_loss(z, k, log_pi_old, 1.0), z)
    assert torch.count_nonzero(g_) == 0
    H = torch.autograd.functional.hessian(lambda x: _ppo_token_loss(x, k, log_pi_old, 1.0), z.detach())
    assert torch.count_nonzero(H) == 0


# TRL parity (its own loss code on identical tensors) lives in tests/test_trl_parity.py.
