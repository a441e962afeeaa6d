"""Starting two-process runs on CPUs (gloo) from tests: as documented (`accelerate launch`) or through torchrun."""
from __future__ import annotations

import os
import subprocess
import sys


def accelerate_launch(config: str, script_args: list[str], port: int | str, env: dict) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file $(lco presets accelerate CONFIG) --num_processes 2 …`, as documented.

    With no GPU, accelerate starts the two processes through torchrun (gloo) and their Accelerator
    runs on the CPU."""
    from lco_cli.launch import accelerate_configs

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_configs()[config]),
           "--num_processes", "2", "--main_process_port", str(port), *script_args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def torchrun(script_args: list[str], env: dict, port: int | str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                           *script_args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
