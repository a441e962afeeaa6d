"""LoRA through peft: adapters on the policy, the reference as the same module with adapters off,
and adapter-only saving (`model.lora.save: adapter`).

The reference policy π_ref of `lco train` is the initial policy. With LoRA the initial policy is
exactly the trained module with its adapters disabled (the base weights never change), so
`ReferenceView` runs the policy under peft's `disable_adapter()` instead of loading a second copy:
one model in memory instead of two.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import ModelConfig

#: attribute on a PeftModel that tells `save_final` how to write it ('merged' | 'adapter')
LORA_SAVE_ATTR = "lco_lora_save"
ADAPTER_CONFIG = "adapter_config.json"
STAGE_META = "lco_stage.json"


def apply_lora(model, cfg: "ModelConfig", *, base_ref: str):
    """Wrap `model` in peft LoRA adapters; the adapter records `base_ref` as its base model."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lcfg)
    peft_model.peft_config["default"].base_model_name_or_path = _absolute(base_ref)
    setattr(peft_model, LORA_SAVE_ATTR, cfg.lora.save)
    return peft_model


def _absolute(ref: str) -> str:
    """Local folders as absolute paths (the adapter is loaded from elsewhere later); hub ids as they are."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def save_adapter(peft_model, tmp: Path, final_dir: Path) -> dict:
    """Write adapter_model.safetensors + adapter_config.json into `tmp`; returns the base note for
    lco_stage.json (absolute, and relative to the final folder so a moved run dir still loads)."""
    peft_model.save_pretrained(str(tmp), safe_serialization=True)
    base = peft_model.peft_config["default"].base_model_name_or_path
    note = {"lora_save": "adapter", "base": base}
    if Path(base).exists():
        note["base_relative"] = os.path.relpath(base, Path(final_dir).resolve())
    return note


def is_adapter_dir(ref: str) -> bool:
    return (Path(ref) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: str) -> str:
    """The base model an adapter folder applies to: lco_stage.json's relative path first (run dirs
    move), then the path peft recorded in adapter_config.json."""
    folder = Path(adapter_dir)
    meta = folder / STAGE_META
    if meta.is_file():
        rel = json.loads(meta.read_text()).get("base_relative")
        if rel and (folder / rel).exists():
            return str((folder / rel).resolve())
    return json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


class ReferenceView:
    """π_ref as the LoRA policy with its adapters disabled — the same parameters, no copy.

    Called like a frozen `HiddenStatesLM` (`view(input_ids=…, attention_mask=…)`, `view.head()`).
    The forward runs without gradients and in eval mode (no dropout), as a frozen copy would."""

    def __init__(self, policy, peft_model):
        self.policy, self.peft_model = policy, peft_model

    def __call__(self, input_ids, attention_mask):
        import torch  # here, not at the top: `lco validate` reaches this module and must not import torch

        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), self.peft_model.disable_adapter():
                return self.policy(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            self.policy.train(was_training)

    def head(self):
        return self.policy.head()

    def to(self, *_args, **_kwargs) -> "ReferenceView":
        return self  # lives wherever the policy lives


def reference_for(policy) -> ReferenceView | None:
    """A `ReferenceView` of `policy` (a HiddenStatesLM) when it carries LoRA adapters, else None
    (then the caller loads a frozen copy of the initial policy)."""
    lm = getattr(policy, "lm", policy)
    if hasattr(lm, "disable_adapter") and hasattr(lm, "peft_config"):
        return ReferenceView(policy, lm)
    return None
