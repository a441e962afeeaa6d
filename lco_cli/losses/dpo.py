"""The DPO loss of the reward-model stage (φ_DPO, paper eq. 13)."""
from __future__ import annotations

import torch.nn.functional as F


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Sigmoid DPO loss per pair (Rafailov et al. 2023, eq. 7) and the β-scaled implicit rewards.

    loss = −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) with sequence log-probabilities π, ref.
    """
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()
