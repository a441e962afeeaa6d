"""The FSDP path on 2 CPU processes (gloo): `lco train` with dense DPO advantages under the bundled
FSDP2 accelerate config equals the same run under DDP; the lm_head gather's gradient is exact.

Both runs are started as documented, `accelerate launch --config_file $(lco presets accelerate …)`
with the bundled ddp / fsdp files. accelerate enables FSDP only on GPUs (`AcceleratorState` keeps
MULTI_CPU on CPUs), so the launched processes run the real CLI through a small launcher that flips
that one switch after accelerate has read the FSDP plugin from the environment; everything else
(the environment `accelerate launch` derives from the file, `fully_shard` wrapping, collectives)
is the real thing.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, invoke, read_jsonl
from launching import accelerate_launch, torchrun

TESTS = str(Path(__file__).parent)
LAUNCHER = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, os.environ["LCO_TESTS_DIR"])
    from accelerate import Accelerator
    from cpu_fsdp import enable_cpu_fsdp

    enable_cpu_fsdp()
    _prepare = Accelerator.prepare

    def _recording_prepare(self, *objs):
        out = _prepare(self, *objs)
        from torch.distributed.fsdp import FSDPModule
        model = out[0]
        record = {"distributed_type": str(self.distributed_type),
                  "fsdp_units": sorted({type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)}),
                  "n_units": sum(isinstance(m, FSDPModule) for m in model.modules())}
        with open(os.environ["LCO_TEST_RECORD"] + f".{self.process_index}", "w") as fh:
            json.dump(record, fh)
        return out

    Accelerator.prepare = _recording_prepare
    from lco_cli.cli import main
    sys.argv = ["lco", *sys.argv[1:]]
    main()
''')


def test_presets_accelerate_prints_bundled_configs(runner, workdir):
    import yaml

    res = invoke(runner, "presets", "accelerate", "fsdp")
    assert res.exit_code == 0
    cfg = yaml.safe_load(Path(res.output.strip()).read_text())
    assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
    assert cfg["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    for name, kind in (("ddp", "MULTI_GPU"), ("deepspeed_zero3", "DEEPSPEED")):
        res = invoke(runner, "presets", "accelerate", name)
        assert res.exit_code == 0 and yaml.safe_load(Path(res.output.strip()).read_text())["distributed_type"] == kind
    assert yaml.safe_load((Path(invoke(runner, "presets", "accelerate", "deepspeed_zero3").output.strip())).read_text())[
        "deepspeed_config"]["zero_stage"] == 3
    listing = invoke(runner, "presets", "accelerate")
    assert all(n in listing.output for n in ("ddp", "fsdp", "deepspeed_zero3"))
    bad = invoke(runner, "presets", "accelerate", "zero9")
    assert bad.exit_code == 2 and "zero9" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_fsdp_train_dpo_equals_ddp_on_two_cpu_processes(run_dir, workdir):
    (workdir / "launch_cpu_fsdp.py").write_text(LAUNCHER)
    shutil.copytree(run_dir, workdir / "run_ddp")
    # held-out accuracy and checkpoints run on the main process only: FSDP refuses them (docs/scale.md)
    args = ["train", "fast.yaml", "train.steps=2", "train.eval_every=0", "train.eval_problems=0", "train.advantage=dpo",
            "train.checkpoint_every=2"]
    ddp = accelerate_launch("ddp", ["launch_cpu_fsdp.py", *args, "--run-dir", "run_ddp"], free_port(), {"LCO_TEST_RECORD": str(workdir / "ddp"), "LCO_TESTS_DIR": TESTS})
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    fsdp = accelerate_launch("fsdp", ["launch_cpu_fsdp.py", *args, "--run-dir", "run"], free_port(), {"LCO_TEST_RECORD": str(workdir / "fsdp"), "LCO_TESTS_DIR": TESTS})
    assert fsdp.returncode == 0, fsdp.stderr[-4000:]

    assert json.loads((workdir / "ddp.0").read_text())["distributed_type"] == "DistributedType.MULTI_CPU"
    record = json.loads((workdir / "fsdp.1").read_text())
    assert record["distributed_type"] == "DistributedType.FSDP"
    # auto wrap by decoder layer: each of the 2 layers is its own unit, plus the root
    assert record["fsdp_units"] == ["FSDPHiddenStatesLM", "FSDPQwen2DecoderLayer"] and record["n_units"] == 3

    ddp_rows, fsdp_rows = read_jsonl(workdir / "run_ddp/train/metrics.jsonl"), read_jsonl(run_dir / "train/metrics.jsonl")
    assert [r["step"] for r in fsdp_rows] == [1, 2]
    for a, b in zip(ddp_rows, fsdp_rows):
        assert a["reward_mean"] == b["reward_mean"] and a["response_len"] == b["response_len"]  # same rollouts
        # Same math, different reduction: FSDP reduce-scatters and norms DTensor shards; float32
        # summation-order noise is ~1e-7 relative (seen: 1e-7 on grad_norm).
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    w_ddp = load_file(str(workdir / "run_ddp/train/final/model.safetensors"))
    w_fsdp = load_file(str(run_dir / "train/final/model.safetensors"))
    w_init = load_file(str(run_dir / "sft/final/model.safetensors"))
    assert set(w_fsdp) == set(w_ddp)  # the gathered full state dict, tied head saved once
    lr = 1e-3
    for k in w_ddp:
        # Adam's step is lr·m/(√v+ε); reduction-order noise in a near-zero gradient element can change
        # its step by a fraction of lr (same argument as the DDP test in test_sft.py): atol 1e-3·lr.
        torch.testing.assert_close(w_fsdp[k], w_ddp[k], rtol=1e-4, atol=1e-3 * lr)
    assert any(not torch.equal(w_fsdp[k], w_init[k]) for k in w_init)  # it trained


GATHER_SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from lco_cli.engines.sharding import full_weight

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 6))
            self.head = torch.nn.Linear(6, 10, bias=True)
        def forward(self, x):
            return self.body(x)

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    net, plain = Net(), Net()
    plain.load_state_dict(net.state_dict())
    fully_shard(net.body[0]); fully_shard(net)
    xs = [torch.randn(8, 4, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    h = net(xs[rank])
    net.reshard()  # the head sharded again, as a wrap policy giving it its own unit would leave it
    assert isinstance(net.head.weight, DTensor)
    w, b = full_weight(net.head.weight), full_weight(net.head.bias)
    assert w.shape == (10, 6) and b.shape == (10,)
    (h @ w.T + b).pow(2).mean().backward()
    got = [net.head.weight.grad.full_tensor(), net.head.bias.grad.full_tensor()]
    # reference: one process, the mean of both ranks' losses (FSDP averages gradients over ranks)
    (sum((plain(x) @ plain.head.weight.T + plain.head.bias).pow(2).mean() for x in xs) / 2).backward()
    err = max(float((g - r).abs().max()) for g, r in zip(got, [plain.head.weight.grad, plain.head.bias.grad]))
    print(f"rank{rank} err={err:.3e}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(0 if err < 1e-6 else 1)
''')


@pytest.mark.slow
def test_full_weight_gathers_a_sharded_head_with_exact_gradients(workdir):
    (workdir / "gather.py").write_text(GATHER_SCRIPT)
    res = torchrun(["gather.py"], {}, free_port())
    # Tolerance 1e-6: the same float32 products summed in another order (reduce-scatter vs one process).
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "rank0 err=" in res.stdout and "rank1 err=" in res.stdout


def test_full_weight_passes_plain_tensors_and_refuses_fsdp1_and_zero3_partitions():
    from lco_cli.engines.sharding import full_weight
    from lco_cli.errors import ConfigError

    w = torch.randn(5, 3)
    assert full_weight(w) is w and full_weight(None) is None
    flat = torch.randn(15)
    flat._fsdp_flattened = True
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        full_weight(flat)
    zero3 = torch.empty(0)
    zero3.ds_id = 7  # what DeepSpeed ZeRO-3 attaches to a partitioned parameter
    with pytest.raises(ConfigError, match="ZeRO-3"):
        full_weight(zero3)


def test_wheel_ships_the_accelerate_configs(tmp_path):
    import zipfile

    root = Path(__file__).parents[1]
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                          str(root)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("lco-*.whl"))).namelist()
    assert {f"lco_cli/launch/{n}.yaml" for n in ("ddp", "fsdp", "deepspeed_zero3")} <= set(names)


def test_fsdp_refuses_main_process_only_work_instead_of_hanging(monkeypatch):
    from lco_cli.config import TrainConfig
    from lco_cli.engines.sharding import ready_for_fsdp
    from lco_cli.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="train.eval_problems"):
        ready_for_fsdp(None, TrainConfig(eval_problems=8))
    with pytest.raises(ConfigError, match="train.checkpoint_every"):
        ready_for_fsdp(None, TrainConfig(eval_problems=0, steps=10, checkpoint_every=5))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert ready_for_fsdp("policy", TrainConfig()) == "policy"  # no FSDP: untouched, nothing checked
