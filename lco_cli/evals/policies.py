"""What an `eval.policies` entry reads besides the eval section: composite policies declare the
stage outputs they are built from and the preset keys of other sections they read, so the eval
stage's identity (`runtime.stage`) follows them. Torch-free: the run planner reads it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyKind:
    stages: tuple[str, ...]  # stage outputs the policy is built from (its upstream)
    reads: tuple[str, ...]   # dotted preset keys outside `eval` that change its numbers


#: π* = softmax(z_sft + (log φ_DPO − log φ_ref)/β), β = train.beta (`recipes.eval.load_pi_star`).
KINDS = {"pi_star": PolicyKind(stages=("sft", "rm"), reads=("train.beta",))}


def policy_stages(name: str) -> list[str]:
    """The stage outputs a policy entry reads: a composite's parts, else the name itself."""
    kind = KINDS.get(name)
    return list(kind.stages) if kind else [name]


def policy_reads(name: str) -> tuple[str, ...]:
    kind = KINDS.get(name)
    return kind.reads if kind else ()
