"""The full lm_head weight for the chunked-loss engine when the policy is sharded (FSDP).

The engine applies the lm_head itself, in token chunks, outside the model's forward (engines/chunked.py),
so under FSDP it needs the whole `[V, H]` head weight and a gradient that reaches the shards.

Decision: **gather, differentiably** — not FSDP's `summon_full_params`.

* FSDP2 (`fully_shard`, what `lco_cli/launch/fsdp.yaml` selects) keeps a module's parameters as
  DTensors sharded on dim 0. The root module (which owns the lm_head and, for tied models, the
  embedding) is not resharded after its forward, so right after the policy's forward the head is
  usually a plain full tensor already and is returned as it is: its gradient is reduce-scattered by
  FSDP's own post-backward hook like every other parameter's.
* Where the head is still sharded (a DTensor: called before a forward, or a wrap policy that put the
  head in its own unit) it is all-gathered with `redistribute(Replicate)` and handed to the engine
  through `to_local(grad_placements=[Partial("avg")])`: autograd then reduce-scatters the engine's
  head gradient back onto the shards, averaged over ranks exactly as FSDP averages the rest.
* `summon_full_params` is a no-grad context for FSDP1: gradients computed on the summoned weight
  never reach the sharded flat parameter, so it cannot serve a training loss. FSDP1's flattened
  parameters are therefore refused with a message pointing to `fsdp_version: 2`.
* DeepSpeed ZeRO-3 partitions parameters the same way (empty outside their module's forward); its
  gather (`deepspeed.zero.GatheredParameters`) is not wired in, so ZeRO-3 parameters are refused
  with a message pointing to the FSDP2 config.
"""
from __future__ import annotations

import os

import torch

from lco_cli.errors import ConfigError


def full_weight(weight: torch.Tensor | None) -> torch.Tensor | None:
    """`weight` whole on every rank, with gradients flowing back to its shards (see module doc)."""
    if weight is None:
        return None
    try:
        from torch.distributed.tensor import DTensor, Partial, Replicate
    except ImportError:  # pragma: no cover - torch builds without distributed
        return weight
    if isinstance(weight, DTensor):
        ndim = weight.device_mesh.ndim
        return weight.redistribute(placements=[Replicate()] * ndim).to_local(grad_placements=[Partial("avg")] * ndim)
    if hasattr(weight, "ds_id"):  # a DeepSpeed ZeRO-3 partitioned parameter (empty outside its module's forward)
        raise ConfigError("DeepSpeed ZeRO-3 partitions the lm_head, which lco's chunked loss engine reads outside the "
                          "model's forward; `lco train` does not support ZeRO-3 — launch it with the FSDP2 config "
                          "(`lco presets accelerate fsdp`)")
    if getattr(weight, "_fsdp_flattened", False) and weight.dim() != 2:  # FSDP1 view of a flat shard
        raise ConfigError("FSDP1 flattens the lm_head weight, which the chunked loss engine cannot use; "
                          "launch with an FSDP2 config (fsdp_version: 2, e.g. `lco presets accelerate fsdp`)")
    return weight


# --------------------------------------------------------------------------- the train stage under FSDP


def fsdp_requested() -> bool:
    """True under `accelerate launch` with an FSDP config (accelerate exports ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_sharded(module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, FSDPModule)


def check_train_config_for_fsdp(cfg) -> None:
    """Settings whose work runs on the main process only, which FSDP's collectives would deadlock
    on: refuse them up front (exit 2) rather than hang."""
    if cfg.eval_problems > 0:
        raise ConfigError("train.eval_problems: the held-out accuracy generates on the main process only, which FSDP "
                          "cannot do; set train.eval_problems=0 and run `lco eval` afterwards")
    if cfg.checkpoint_every < cfg.steps:
        raise ConfigError("train.checkpoint_every: checkpoints are written by the main process only, which FSDP cannot "
                          f"do yet; set it to at least train.steps ({cfg.steps})")


def ready_for_fsdp(policy, cfg):
    """Prepare a `HiddenStatesLM` for FSDP2 before `accelerate.prepare` (a no-op without FSDP);
    `cfg` (the train section) is checked with `check_train_config_for_fsdp` first.

    * auto wrap by decoder layer: accelerate wraps the classes named in the prepared module's
      `_no_split_modules`; the wrapper takes the LM's (e.g. ['Qwen2DecoderLayer']).
    * rollouts (`generate`) call the LM directly, outside the root's forward, where the
      root-owned parameters (embeddings, final norm, lm_head) are still sharded: a forward pre-hook
      on the LM unshards them first, and transformers' `generate` is told the LM is FSDP-managed,
      so it keeps every rank stepping until all are done (`synced_gpus`), as collectives require.
    """
    if not fsdp_requested():
        return policy
    check_train_config_for_fsdp(cfg)
    lm = policy.lm
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    policy._no_split_modules = list(getattr(base, "_no_split_modules", None) or [])
    lm._is_fsdp_managed_module = True  # read by transformers.generate -> synced_gpus

    root_initialised: list[bool] = []  # set once the root has run a forward

    def unshard_root(_module, _args):
        if not is_sharded(policy):
            return
        if not root_initialised:  # FSDP2 must see a forward through the root before any inner unit's
            with torch.no_grad():
                one = torch.ones((1, 1), dtype=torch.long, device=next(policy.parameters()).device)
                policy(input_ids=one, attention_mask=one)
            root_initialised.append(True)
        policy.unshard()  # no-op when already unsharded

    lm.register_forward_pre_hook(unshard_root)
    return policy


def gather_state_for_save(accelerator, policy) -> dict | None:
    """Under FSDP, the policy LM's full state dict (a collective: every rank calls this; the main
    process gets the tensors, the others None). None when the policy is not sharded."""
    if not is_sharded(accelerator.unwrap_model(policy)):
        return None
    state = accelerator.get_state_dict(policy)
    if not accelerator.is_main_process:
        return None
    # named_parameters() lists a tied weight once (embeddings = lm_head): save it once, as HF does
    lm = accelerator.unwrap_model(policy).lm
    keep = {name for name, _ in lm.named_parameters()} | {name for name, _ in lm.named_buffers()}
    return {name: value for key, value in state.items() if (name := key.removeprefix("lm.")) in keep}
