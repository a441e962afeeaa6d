"""The built-in `train.algo`s as specs (torch-free): settings, defaults and checks of each, with the
`Update` that runs it. Each `Update` subclasses its spec, so what is declared here is what training uses."""
from __future__ import annotations

from lco_cli.losses.configs import DAPOConfig, GKDConfig, GRPOConfig, GSPOConfig, MiniLLMConfig, PPOConfig, ReinforceConfig
from lco_cli.rl.registry import register_algo
from lco_cli.rl.spec import AlgoSpec

#: DAPO's overlong cache is 4096 of 20480 tokens (§4.1); the same fraction of our max length.
OVERLONG_CACHE_FRACTION = 0.2


@register_algo("lco", update="lco_cli.rl.lco:LCOUpdate")
class LCOSpec(AlgoSpec):
    dense_advantages = True
    #: One pass over each rollout batch in 4 minibatch steps with z_old frozen at the batch's start: the
    #: authors' `policy_train_lco*.py` train `inner_epochs=1` pass over each rollout buffer in minibatches
    #: (`max_batch_size`) with the buffer's old logits; their count depends on buffer/GPU/accumulation
    #: sizes no script fixes, so 4 is our choice (docs/compare.md "Defaults").
    default_minibatches = 4
    #: The sequence reward and its normalisation feed sparse advantages only; φ of eq. 12 feeds logprob only.
    reads_when = {"reward": ("advantage", ("sparse",)), "advantage_norm": ("advantage", ("sparse",)),
                  "advantage_model": ("advantage", ("logprob",)),
                  "advantage_topk": ("advantage_support", ("policy_topk", "authors"))}

    @classmethod
    def needs_reward_model(cls, cfg) -> bool:
        return cfg.reward == "rm" or (cfg.advantage in ("dpo", "logprob") and not (cfg.advantage == "logprob" and cfg.advantage_model))

    @classmethod
    def check(cls, cfg) -> list[str]:
        errors = super().check(cfg)
        cfg = cls.resolve(cfg)
        if cfg.advantage == "sparse" and cfg.advantage_norm == "group" and cfg.samples_per_prompt < 2:
            errors.append("train.advantage_norm: 'group' needs train.samples_per_prompt >= 2")
        if (cfg.advantage_support != "vocab") != (cfg.advantage_topk is not None):
            errors.append("train.advantage_topk: set it exactly when train.advantage_support is 'policy_topk' or 'authors' "
                          f"(got advantage_support={cfg.advantage_support!r}, advantage_topk={cfg.advantage_topk})")
        if cfg.advantage_support == "authors" and cfg.advantage == "sparse":
            errors.append("train.advantage_support: 'authors' is a support of dense advantages (advantage dpo or logprob)")
        return errors


@register_algo("reinforce", update="lco_cli.rl.policy_gradient:ReinforceUpdate")
class ReinforceSpec(AlgoSpec):
    algo_args = ReinforceConfig


class GroupSpec(AlgoSpec):
    """Group-normalised advantages need several samples of each prompt."""

    min_samples_per_prompt = 2
    default_samples_per_prompt = 4  # paper §5: four responses per instruction for GRPO, DAPO, GSPO


@register_algo("grpo", update="lco_cli.rl.policy_gradient:GRPOUpdate")
class GRPOSpec(GroupSpec):
    algo_args = GRPOConfig

    @classmethod
    def default_args(cls, cfg):
        return {"max_completion_length": cfg.rollout.max_new_tokens}  # dr_grpo's normaliser

    @classmethod
    def loss_needs_reference(cls, cfg) -> bool:
        return cls.loss_config(cfg).beta > 0  # the k3 KL term


@register_algo("gspo", update="lco_cli.rl.policy_gradient:GSPOUpdate")
class GSPOSpec(GroupSpec):
    algo_args = GSPOConfig


@register_algo("dapo", update="lco_cli.rl.policy_gradient:DAPOUpdate")
class DAPOSpec(GroupSpec):
    algo_args = DAPOConfig

    @classmethod
    def owned_args(cls, cfg):
        return {**super().owned_args(cfg), "max_response_length": (cfg.rollout.max_new_tokens, "train.rollout.max_new_tokens")}

    @classmethod
    def default_args(cls, cfg):
        return {"overlong_cache": max(1, round(OVERLONG_CACHE_FRACTION * cfg.rollout.max_new_tokens))}


@register_algo("ppo", update="lco_cli.rl.ppo:PPOUpdate")
class PPOSpec(AlgoSpec):
    algo_args = PPOConfig
    default_update_epochs = 4  # TRL 1.16 PPOConfig.num_ppo_epochs = 4 (num_mini_batches = 1)

    @classmethod
    def needs_reward_model(cls, cfg) -> bool:
        return True  # the dense token rewards

    @classmethod
    def loss_needs_reference(cls, cfg) -> bool:
        return True  # the per-token KL penalty in the shaped rewards


class TeacherSpec(AlgoSpec):
    @classmethod
    def needs_reward_model(cls, cfg) -> bool:
        return True  # φ_DPO is the teacher


@register_algo("gkd", update="lco_cli.rl.distill:GKDUpdate")
class GKDSpec(TeacherSpec):
    algo_args = GKDConfig


@register_algo("minillm", update="lco_cli.rl.distill:MiniLLMUpdate")
class MiniLLMSpec(TeacherSpec):
    algo_args = MiniLLMConfig

    @classmethod
    def check(cls, cfg) -> list[str]:
        errors = super().check(cfg)
        if cfg.rollout.engine != "hf":
            errors.append("train.rollout.engine: minillm's teacher-mixed sampling needs 'hf'")
        return errors
