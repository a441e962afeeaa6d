"""FSDP on CPU processes for the tests: accelerate turns FSDP on only on GPUs (`AcceleratorState` keeps
MULTI_CPU on CPUs), so this flips that one switch after accelerate has read the FSDP plugin from the
environment `accelerate launch` derived from the bundled fsdp config; `fully_shard` wrapping and the
collectives are the real thing. Call `enable_cpu_fsdp()` in a launched process before the Accelerator."""
from __future__ import annotations

import os


def enable_cpu_fsdp() -> None:
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    init = AcceleratorState.__init__

    def init_with_cpu_fsdp(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()

    AcceleratorState.__init__ = init_with_cpu_fsdp
