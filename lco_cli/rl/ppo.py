"""PPO as a `train.algo`: value model, GAE and dense token rewards from the DPO RM (Zhong et al. 2024)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lco_cli.errors import ConfigError
from lco_cli.losses.base import explained_variance
from lco_cli.losses.policy_gradient import PPO
from lco_cli.rl.advantage_sources import teacher_logprobs
from lco_cli.rl.policy_gradient import PolicyGradientUpdate, padded, response_mask
from lco_cli.rl.specs import PPOSpec
from lco_cli.rl.update import HiddenStatesLM, Prepared, flat, global_mean, per_token, row_chunks


class ValueModel(torch.nn.Module):
    """A scalar value head on a copy of the initial policy's decoder: V(s_t) at every position."""

    def __init__(self, lm):
        super().__init__()
        self.body = HiddenStatesLM(lm)
        base = self.body.base()
        out, inp = base.get_output_embeddings(), base.get_input_embeddings()
        if out is not None and out.weight is not inp.weight:  # the LM head is unused: keep DDP from waiting on it
            out.weight.requires_grad_(False)
        hidden = base.config.hidden_size
        weight = next(lm.parameters())
        self.v_head = torch.nn.Linear(hidden, 1, dtype=weight.dtype)
        torch.nn.init.normal_(self.v_head.weight, std=1.0 / math.sqrt(hidden + 1))
        torch.nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask):
        return self.v_head(self.body(input_ids, attention_mask)).squeeze(-1).float()  # [B, L]


@dataclass(frozen=True)
class PPOPrepared(Prepared):
    old_values: torch.Tensor = per_token()  # V_old(s_t)
    returns: torch.Tensor = per_token()     # GAE returns R_t


class PPOUpdate(PPOSpec, PolicyGradientUpdate):
    """PPO with a value model, GAE and dense token rewards (Zhong et al. 2024, "DPO meets PPO").

    Token reward r_t = log φ_DPO(a_t|s_t) − log φ_ref(a_t|s_t) (the DPO RM's per-token log-ratio,
    unscaled, so Σ_t r_t is the `rm` sequence reward) − kl_coef·(log π_old − log π_ref); with
    `train.reward: verifier` the ±1 verdict is added at the last token as well. GAE (γ = 1,
    λ = 0.95), whitened advantages, clipped ratio (ε = 0.2) and clipped value loss (TRL). The value
    model — a value head on a fresh copy of the initial policy — has its own AdamW (`value_lr`,
    default `train.lr`), stepped after every policy step, gradient-clipped at `train.max_grad_norm`,
    and saved in the stage's checkpoints (resumable).
    """

    loss_cls = PPO
    aggregation = "token"
    prepared_cls = PPOPrepared

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        from lco_cli.runtime import models
        from lco_cli.runtime.training import make_optimizer

        if env.init_from is None:
            raise ConfigError("train.algo=ppo: the loop did not say where the initial policy is (TrainEnv.init_from)")
        lm = models.load_model(env.init_from, env.model_cfg, trainable=True)
        value = ValueModel(lm)
        value_opt = make_optimizer(value, self.algo.config.value_lr or cfg.lr, cfg.weight_decay)
        self.value, self.value_opt = env.accelerator.prepare(value, value_opt)
        self.value_params = [q for q in self.value.parameters() if q.requires_grad]

    def behaviour_from_training_forward(self) -> bool:
        return False  # the KL-shaped token rewards need log π_old before any loss, whatever the epochs

    def _values(self, mb) -> torch.Tensor:
        return flat(self.value(input_ids=mb.input_ids, attention_mask=mb.attention_mask), mb.targets)

    def token_advantages(self, batch, common, stats):
        cfg = self.cfg
        rm_lp, rm_ref_lp, _ = teacher_logprobs(self.env, batch, cfg.micro_batch_size)
        old_values = torch.cat([self._values(batch.subset(rows)) for rows in row_chunks(batch.size, cfg.micro_batch_size)])
        dense = (rm_lp - rm_ref_lp).float()
        mask = response_mask(batch.response_len)
        rewards = padded(dense, mask)
        if cfg.reward == "verifier":  # the outcome reward at each response's last token
            last = (batch.response_len - 1).clamp(min=0)
            rewards[torch.arange(batch.size, device=rewards.device), last] += batch.rewards.float()
        old, ref = padded(common.old_logprobs.float(), mask), padded(common.ref_logprobs.float(), mask)
        shaped = self.algo.shaped_rewards(rewards, old, ref, mask)
        values = padded(old_values, mask)
        adv, returns = self.algo.advantages(shaped, values, mask)
        stats["dense_reward_mean"] = global_mean(self.env, dense)
        stats["kl_penalty_mean"] = global_mean(self.env, (shaped - rewards)[mask])
        stats["value_mean"] = global_mean(self.env, old_values)
        stats["explained_variance"] = explained_variance(values, returns, mask)
        return adv[mask], {"old_values": old_values, "returns": returns[mask]}

    def loss_inputs(self, mb, prep: PPOPrepared, logprobs):
        return {"old_logprobs": prep.old_logprobs, "ref_logprobs": prep.ref_logprobs,
                "values": self._values(mb), "old_values": prep.old_values, "returns": prep.returns}

    def mask_part(self, inputs, keep, logprobs, part):
        out = super().mask_part(inputs, keep, logprobs, part)
        if part == "neg":
            # The value loss belongs to the "pos" pass only (its gradient must not count twice); in the
            # "neg" pass V = V_old = R gives it value 0 and no gradient.
            out["values"] = out["old_values"] = inputs["returns"]
        return out

    def aux_step(self) -> dict[str, float]:
        from lco_cli.runtime.training import grad_norm_of

        acc = self.env.accelerator
        if self.cfg.max_grad_norm > 0:
            norm = float(acc.clip_grad_norm_(self.value_params, self.cfg.max_grad_norm))
        else:
            norm = grad_norm_of(self.value_params)
        self.value_opt.step()
        self.value_opt.zero_grad(set_to_none=True)
        return {"value_grad_norm": norm}

    def aux_zero_grad(self) -> None:
        self.value_opt.zero_grad(set_to_none=True)
