"""Parity with TRL (the `test` extra installs it): lco's losses against TRL's own loss code on
identical tensors — `GRPOTrainer._compute_loss` (GRPO / BNPO / Dr. GRPO / DAPO / GSPO), the DPO loss
of `DPOTrainer._compute_loss`, `GKDTrainer.generalized_jsd_loss` and TRL's soft overlong punishment.

TRL's methods are called unbound on a stand-in `self` that carries exactly the attributes the method
reads (its config values), with the model forward replaced by the log-probabilities under test, so
the arithmetic that runs is TRL's, line for line. Values and gradients are compared in float64.
"""
from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from pytest import approx

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl.experimental.gkd import GKDTrainer  # noqa: E402  (trl is a test dependency: no skip)
from trl.rewards import get_soft_overlong_punishment  # noqa: E402

from lco_cli.losses.distillation import gkd_token_loss  # noqa: E402
from lco_cli.losses.dpo import dpo_loss  # noqa: E402
from lco_cli.losses.estimators import overlong_reward_shaping  # noqa: E402
from lco_cli.losses.policy_gradient import DAPO, GRPO, GSPO  # noqa: E402

D = torch.float64


class _Accelerator:
    """What TRL's loss code asks of the accelerator in one process."""

    num_processes = 1
    sync_gradients = True
    device = torch.device("cpu")

    @staticmethod
    def reduce(x, reduction="sum"):
        return x

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


# --------------------------------------------------------------------------- GRPO family


def _grpo_self(per_token_logps, *, beta, eps_low, eps_high, loss_type, level, max_completion_length):
    """A stand-in GRPOTrainer: TRL's defaults for the switches lco does not use (no vLLM, no entropy
    masking or bonus, no off-policy mask, no aux loss, one accumulation step)."""
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token_logps, torch.zeros_like(per_token_logps), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_completion_length,
        accelerator=_Accelerator(), _entropy_bonus_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
    )


def trl_grpo_loss(lp, old, ref, adv, mask, *, beta, eps_low, eps_high, loss_type, level):
    from trl import GRPOTrainer

    B, T = lp.shape
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    fake = _grpo_self(lp, beta=beta, eps_low=eps_low, eps_high=eps_high, loss_type=loss_type, level=level,
                      max_completion_length=T)
    return GRPOTrainer._compute_loss(fake, None, inputs)


def _random_policy_batch(seed):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(4, 6, generator=g, dtype=D) * 3
    lp = (old + 0.3 * torch.randn(4, 6, generator=g, dtype=D)).requires_grad_(True)
    ref = old + 0.2 * torch.randn(4, 6, generator=g, dtype=D)
    adv = torch.randn(4, generator=g, dtype=D)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    return lp, old, ref, adv, mask


@pytest.mark.parametrize(
    "algo, trl_args",
    [
        (GRPO(), dict(beta=0.04, eps_low=0.2, eps_high=0.2, loss_type="grpo", level="token")),
        (GRPO(loss_type="bnpo", epsilon_high=0.28), dict(beta=0.04, eps_low=0.2, eps_high=0.28, loss_type="bnpo", level="token")),
        (GRPO(loss_type="dr_grpo"), dict(beta=0.04, eps_low=0.2, eps_high=0.2, loss_type="dr_grpo", level="token")),
        (DAPO(), dict(beta=0.0, eps_low=0.2, eps_high=0.28, loss_type="dapo", level="token")),
        (GSPO(eps_low=0.05, eps_high=0.05), dict(beta=0.0, eps_low=0.05, eps_high=0.05, loss_type="grpo", level="sequence")),
        (GSPO(), dict(beta=0.0, eps_low=3e-4, eps_high=4e-4, loss_type="grpo", level="sequence")),
    ],
)
def test_group_losses_equal_trl_grpo_compute_loss(algo, trl_args):
    lp, old, ref, adv, mask = _random_policy_batch(6)
    ours, _ = algo.loss(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask, ref_logprobs=ref)
    theirs = trl_grpo_loss(lp, old, ref, adv, mask, **trl_args)
    assert ours.item() == approx(theirs.item(), rel=1e-12)  # float64, same operations
    (g_ours,) = torch.autograd.grad(ours, lp)
    (g_theirs,) = torch.autograd.grad(theirs, lp)
    torch.testing.assert_close(g_ours * mask, g_theirs * mask, rtol=1e-10, atol=1e-12)


def test_grpo_parity_can_fail():
    """The harness distinguishes configurations: a different ε gives a different TRL loss."""
    lp, old, ref, adv, mask = _random_policy_batch(7)
    with torch.no_grad():
        lp += 0.5  # ratios far from 1, so clipping matters
    a = trl_grpo_loss(lp, old, ref, adv, mask, beta=0.04, eps_low=0.2, eps_high=0.2, loss_type="grpo", level="token")
    b = trl_grpo_loss(lp, old, ref, adv, mask, beta=0.04, eps_low=0.2, eps_high=0.5, loss_type="grpo", level="token")
    assert a.item() != approx(b.item(), rel=1e-6)


# --------------------------------------------------------------------------- DPO


def trl_dpo_loss(pc, pr, rc, rr, beta):
    """TRL's DPOTrainer._compute_loss (loss_type='sigmoid', reverse KL) on sequence log-probs.

    The stand-in model returns per-token log-probs whose sums are `pc` / `pr` (all mass on the first
    completion token), with precomputed reference log-probs `rc` / `rr`."""
    from trl import DPOTrainer

    B = pc.shape[0]
    L = 3
    completion_mask = torch.zeros(2 * B, L, dtype=torch.long)
    completion_mask[:, 1:] = 1
    per_token = torch.zeros(2 * B, L - 1, dtype=pc.dtype)
    per_token = per_token + torch.nn.functional.pad(torch.cat([pc, pr]).unsqueeze(1), (0, L - 2))
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(2 * B, L - 1), mean_logits=torch.zeros(2 * B, L - 1),
                              is_top1=torch.zeros(2 * B, L - 1, dtype=torch.bool))
    fake = SimpleNamespace(
        model=SimpleNamespace(training=False), accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0], beta=beta,
        label_smoothing=0.0, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
        _tp_size=1, args=SimpleNamespace(), ref_model=None, router_aux_loss_coef=0.0, f_alpha_divergence_coef=1.0,
    )
    inputs = {"input_ids": torch.zeros(2 * B, L, dtype=torch.long), "attention_mask": torch.ones(2 * B, L, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    return DPOTrainer._compute_loss(fake, lambda **kwargs: outputs, inputs, return_outputs=False)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_trl_dpo_trainer(beta):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(8, generator=g, dtype=D) for _ in range(4))
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    ours, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    theirs = trl_dpo_loss(pc, pr, rc, rr, beta)
    assert ours.mean().item() == approx(theirs.item(), rel=1e-12)  # TRL averages over pairs
    g_ours = torch.autograd.grad(ours.mean(), (pc, pr))
    g_theirs = torch.autograd.grad(theirs, (pc, pr))
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- GKD


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_gkd_token_loss_equals_trl_generalized_jsd(beta):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(1, 5, 11, generator=g, dtype=D, requires_grad=True)
    te = torch.randn(1, 5, 11, generator=g, dtype=D)
    theirs = GKDTrainer.generalized_jsd_loss(s, te, beta=beta, reduction="none").sum(-1)  # element-wise [B, T, V]
    ours = gkd_token_loss(s[0], te[0], beta=beta)
    torch.testing.assert_close(ours, theirs.reshape(-1), rtol=1e-10, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), s)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), s)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- DAPO overlong shaping


def test_overlong_shaping_equals_trl_soft_overlong_punishment():
    fn = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
    lengths = [3, 6, 7, 10, 11]
    theirs = fn(completion_ids=[[0] * n for n in lengths])
    assert overlong_reward_shaping(torch.tensor(lengths), 10, 4).tolist() == approx(theirs)
