"""accelerate config files shipped with lco: `lco presets accelerate NAME` prints a path for
`accelerate launch --config_file $(lco presets accelerate fsdp) -m lco_cli train PRESET`."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DESCRIPTIONS = {
    "ddp": "data parallel: every process holds the whole policy (the default multi-GPU setup)",
    "fsdp": "FSDP2 full shard, auto-wrapped by decoder layer; the loss engine gathers the lm_head (lco_cli/engines/sharding.py)",
    "deepspeed_zero3": "DeepSpeed ZeRO-3 for sft/rm (train refuses it: use fsdp); unverified, see docs/scale.md",
}


def accelerate_configs() -> dict[str, Path]:
    """Name -> path of every bundled accelerate config."""
    return {p.stem: p for p in sorted(HERE.glob("*.yaml"))}
