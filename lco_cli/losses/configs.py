"""The `train.algo_args` of every baseline loss: frozen, validated dataclasses, free of torch.

`lco validate` checks a preset's `algo_args` against these without importing torch (the loss classes in
`losses.policy_gradient` / `losses.distillation` point their `Config` here). A bad value raises one
`ConfigError` listing every problem.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from lco_cli.errors import ConfigError

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
GSPO_VARIANTS = ("sequence", "token")


class Checks:
    """Collects every config problem so one :class:`ConfigError` lists them all."""

    def __init__(self, owner: str):
        self.owner, self.problems = owner, []

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(f"{self.owner}.{message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(f"invalid {self.owner} config: {'; '.join(self.problems)}", self.problems)


@dataclass(frozen=True)
class LossConfig:
    """Base: frozen, validated in ``__post_init__`` (raises :class:`ConfigError`)."""

    #: the name in error messages; default: the class name without "Config" (or the enclosing class's name)
    owner: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        checks = Checks(self.owner or type(self).__qualname__.split(".")[0].removesuffix("Config") or "algo_args")
        self._check(checks)
        checks.raise_if_any()

    def _check(self, c: Checks) -> None:  # overridden per algorithm
        pass


def check_group(c: Checks, group_size: int, minimum: int) -> None:
    c.require(isinstance(group_size, int) and group_size >= minimum, f"group_size must be an int >= {minimum}")


@dataclass(frozen=True)
class ReinforceConfig(LossConfig):
    #: responses per prompt: 1 → batch-mean baseline; >1 → RLOO leave-one-out baseline
    group_size: int = 1
    #: subtract the baseline (Williams 1992's b); False → raw rewards
    use_baseline: bool = True

    def _check(self, c: Checks) -> None:
        check_group(c, self.group_size, 1)


@dataclass(frozen=True)
class PPOConfig(LossConfig):
    cliprange: float = 0.2  #: ε (Schulman 2017; TRL)
    cliprange_value: float = 0.2  #: value clipping (TRL)
    vf_coef: float = 0.1  #: value-loss weight (TRL)
    gamma: float = 1.0  #: discount (TRL)
    lam: float = 0.95  #: GAE λ (TRL)
    kl_coef: float = 0.05  #: per-token KL reward penalty (TRL)
    whiten_advantages: bool = True  #: TRL whitens GAE advantages
    value_lr: Optional[float] = None  #: value model's own learning rate; None → train.lr (TRL: one lr)

    def _check(self, c: Checks) -> None:
        c.require(self.value_lr is None or self.value_lr > 0, "value_lr must be > 0")
        c.require(0 < self.cliprange < 1, "cliprange must be in (0, 1)")
        c.require(self.cliprange_value > 0, "cliprange_value must be > 0")
        c.require(self.vf_coef >= 0, "vf_coef must be >= 0")
        c.require(0 <= self.gamma <= 1, "gamma must be in [0, 1]")
        c.require(0 <= self.lam <= 1, "lam must be in [0, 1]")
        c.require(self.kl_coef >= 0, "kl_coef must be >= 0")


@dataclass(frozen=True)
class GRPOConfig(LossConfig):
    epsilon: float = 0.2  #: ε (GRPO; TRL)
    epsilon_high: Optional[float] = None  #: upper bound; None → epsilon (symmetric)
    beta: float = 0.04  #: β_KL (GRPO paper; TRL's old default)
    loss_type: str = "grpo"  #: grpo | bnpo | dr_grpo (TRL)
    group_size: int = 4  #: responses per prompt (LCO paper §5 setup)
    scale_rewards: bool = True  #: divide by group std (False = Dr. GRPO)
    adv_eps: float = 1e-4  #: std epsilon (TRL)
    max_completion_length: Optional[int] = None  #: dr_grpo normaliser; None → T

    def _check(self, c: Checks) -> None:
        c.require(0 < self.epsilon < 1, "epsilon must be in (0, 1)")
        c.require(self.epsilon_high is None or self.epsilon_high > 0, "epsilon_high must be > 0")
        c.require(self.beta >= 0, "beta must be >= 0")
        c.require(self.loss_type in GRPO_LOSS_TYPES, f"loss_type must be one of {GRPO_LOSS_TYPES}")
        check_group(c, self.group_size, 2)
        c.require(self.adv_eps >= 0, "adv_eps must be >= 0")
        c.require(
            self.max_completion_length is None or self.max_completion_length > 0,
            "max_completion_length must be > 0",
        )


@dataclass(frozen=True)
class DAPOConfig(LossConfig):
    eps_low: float = 0.2  #: DAPO §3.1
    eps_high: float = 0.28  #: DAPO §3.1 (clip-higher)
    group_size: int = 4  #: responses per prompt (LCO paper §5 setup; DAPO used 16)
    adv_eps: float = 1e-4  #: std epsilon (TRL)
    dynamic_sampling: bool = True  #: drop groups with all-equal rewards (§3.2)
    overlong_shaping: bool = True  #: soft overlong punishment (§3.4)
    max_response_length: int = 20480  #: L_max (DAPO §4.1)
    overlong_cache: int = 4096  #: L_cache (DAPO §4.1)
    max_gen_batches: int = 3  #: rollout rounds per step for dynamic sampling, the first included (verl's recipe: 10)

    def _check(self, c: Checks) -> None:
        c.require(0 < self.eps_low < 1, "eps_low must be in (0, 1)")
        c.require(self.eps_high > 0, "eps_high must be > 0")
        check_group(c, self.group_size, 2)
        c.require(self.adv_eps >= 0, "adv_eps must be >= 0")
        c.require(self.max_response_length > 0, "max_response_length must be > 0")
        c.require(isinstance(self.max_gen_batches, int) and self.max_gen_batches >= 1, "max_gen_batches must be an int >= 1")
        c.require(
            0 <= self.overlong_cache <= self.max_response_length,
            "overlong_cache must be in [0, max_response_length]",
        )


@dataclass(frozen=True)
class GSPOConfig(LossConfig):
    eps_low: float = 3e-4  #: GSPO §5.1
    eps_high: float = 4e-4  #: GSPO §5.1
    variant: str = "sequence"  #: sequence (GSPO) | token (GSPO-token)
    group_size: int = 4  #: responses per prompt (LCO paper §5 setup)
    adv_eps: float = 1e-4  #: std epsilon (TRL)

    def _check(self, c: Checks) -> None:
        c.require(0 < self.eps_low < 1, "eps_low must be in (0, 1)")
        c.require(self.eps_high > 0, "eps_high must be > 0")
        c.require(self.variant in GSPO_VARIANTS, f"variant must be one of {GSPO_VARIANTS}")
        check_group(c, self.group_size, 2)
        c.require(self.adv_eps >= 0, "adv_eps must be >= 0")


@dataclass(frozen=True)
class GKDConfig(LossConfig):
    beta: float = 0.5  #: JSD interpolation (GKD; TRL)
    lmbda: float = 0.5  #: fraction of on-policy (student-generated) batches (TRL)
    temperature: float = 1.0  #: softmax temperature inside the divergence (TRL's loss default)

    def _check(self, c: Checks) -> None:
        c.require(0 <= self.beta <= 1, "beta must be in [0, 1]")
        c.require(0 <= self.lmbda <= 1, "lmbda must be in [0, 1]")
        c.require(self.temperature > 0, "temperature must be > 0")


@dataclass(frozen=True)
class MiniLLMConfig(LossConfig):
    teacher_mix_alpha: float = 0.2  #: α of p̃ = αp + (1−α)q_θ (MiniLLM §2.2)
    clip: float = 0.2  #: ε for the weighted ratio (MiniLLM §2.2 / LMOps)
    length_norm: bool = True  #: length normalisation of R_{t+1} (§2.2)
    single_step_reg: bool = True  #: add the single-step reverse-KL term
    whiten_advantages: bool = True  #: LMOps whitens the long-term rewards
    temperature: float = 1.0  #: softmax temperature of the single-step term

    def _check(self, c: Checks) -> None:
        c.require(0 <= self.teacher_mix_alpha < 1, "teacher_mix_alpha must be in [0, 1)")
        c.require(0 < self.clip < 1, "clip must be in (0, 1)")
        c.require(self.temperature > 0, "temperature must be > 0")
