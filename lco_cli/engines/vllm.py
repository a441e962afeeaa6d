"""vLLM rollout/eval engine for vLLM's V1 engine (GPU; optional extra `lco[vllm]`).

Same interface as `generation.HFEngine`: `generate(prompt_ids, n, ...) -> Rollouts` and
`sync_weights(model)`. Imported only when `train.rollout.engine: vllm` or `eval.engine: vllm`.

Targets vLLM 0.22 – 0.31 (the V1 engine; the range TRL 1.16 supports for its colocate mode) and uses
only `LLM`'s public methods: `generate`, `collective_rpc`, `sleep` / `wake_up` and
`reset_prefix_cache`. **It has not been run**: no GPU or vLLM install was available where it was
written; the contract (what is called, with what) is tested against a fake `LLM` in
tests/test_scale_vllm.py.

How it works, colocated with the trainer as TRL's `vllm_mode="colocate"`:

* The engine is built with `distributed_executor_backend="external_launcher"`, so vLLM's worker
  lives inside each trainer process (no separate engine process, no weight serialisation) and
  `tensor_parallel_size` trainer ranks form one vLLM tensor-parallel group; those ranks pool their
  prompts, generate together, and each keeps its own share.
* `sync_weights(model)` runs before each rollout, i.e. after the optimizer steps of the previous
  one: the policy's weights — LoRA adapters merged in, out of place — are pushed with
  `llm.collective_rpc(load_weights_on_worker, args=(weights,))`, which calls the worker's
  `model_runner.model.load_weights(...)`; then the prefix cache is reset (its KV entries were
  computed with the old weights).
* `model.vllm.sleep_mode` (train only): after generating, `llm.sleep(level=2)` frees the weights
  and the KV cache for the trainer; `wake_up(tags=["weights"])` before the push and
  `wake_up(tags=["kv_cache"])` before generating bring them back.
"""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch

from lco_cli.engines.generation import Rollouts
from lco_cli.runtime.lora import is_adapter_dir

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config.schema import VLLMConfig


@dataclass
class VLLMApi:
    """The three vLLM names the engine uses (a test substitutes fakes)."""

    LLM: Any
    SamplingParams: Any
    TokensPrompt: Any


def vllm_api() -> VLLMApi:
    from vllm import LLM, SamplingParams, TokensPrompt

    return VLLMApi(LLM, SamplingParams, TokensPrompt)


def load_weights_on_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs inside each vLLM worker (through `collective_rpc`): load HF-named weights in place."""
    worker.model_runner.model.load_weights(weights=weights)


def merged_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named tensors of `model`, LoRA adapters merged out of place (W + ΔW; the module is untouched).

    A peft LoRA layer holds `…q_proj.base_layer.weight` and its `lora_A/B`; vLLM expects
    `…q_proj.weight` = base + the adapter's delta (peft's `get_delta_weight`)."""
    if not hasattr(model, "get_base_model"):
        yield from ((name, t.detach()) for name, t in model.state_dict().items())
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    lora_layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        layer_name = owner.removesuffix(".base_layer")
        if layer_name != owner and layer_name in lora_layers:
            name = f"{layer_name}.{leaf}"
            if leaf == "weight":
                layer = lora_layers[layer_name]
                with torch.no_grad():
                    tensor = tensor + sum(layer.get_delta_weight(a) for a in layer.active_adapters).to(tensor.dtype)
        yield name, tensor.detach()


def _ensure_distributed_env() -> None:
    """external_launcher reads torch.distributed's env; a single process gets a world of one."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class VLLMEngine:
    """Colocated vLLM (see the module doc). `source`: a model folder vLLM loads directly (eval);
    without it the current weights of `model` are written once to a temporary folder (train)."""

    def __init__(self, model, tokenizer, batch_size: int, settings: "VLLMConfig", *, source: str | None = None,
                 api: VLLMApi | None = None):
        self.api = api or vllm_api()
        self.tokenizer, self.batch_size, self.settings = tokenizer, batch_size, settings
        self.sleep_mode = settings.sleep_mode and source is None  # eval keeps generating: no one to free memory for
        rank, world = _rank_and_world()
        tp = settings.tensor_parallel_size
        if world % tp:
            from lco_cli.errors import ConfigError

            raise ConfigError(f"model.vllm.tensor_parallel_size: {tp} does not divide the {world} training processes")
        self.tp_group = self._tp_group(rank, world, tp)
        if source is not None and is_adapter_dir(source):
            source = None  # vLLM loads full models: write `model`, whose adapter load_model merged
        if source is None:
            source = tempfile.mkdtemp(prefix="lco-vllm-")
            hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft would save the adapter only
            hf_model.save_pretrained(source, safe_serialization=True, state_dict=dict(merged_weights(model)))
            tokenizer.save_pretrained(source)
        _ensure_distributed_env()
        self.llm = self.api.LLM(model=source, tensor_parallel_size=tp, gpu_memory_utilization=settings.gpu_memory_utilization,
                                enable_sleep_mode=self.sleep_mode, distributed_executor_backend="external_launcher",
                                seed=rank // tp,  # one seed per TP group: its ranks must sample identically
                                enable_prefix_caching=True)
        if self.sleep_mode:
            self.llm.sleep(level=2)  # nothing to generate until the first sync

    @staticmethod
    def _tp_group(rank: int, world: int, tp: int):
        if tp == 1:
            return None
        groups = [list(range(start, start + tp)) for start in range(0, world, tp)]
        subgroup, _ = torch.distributed.new_subgroups_by_enumeration(groups)
        return subgroup

    def sync_weights(self, model) -> None:
        """Push the policy's current weights (LoRA merged) into vLLM, in place."""
        if self.sleep_mode:
            self.llm.wake_up(tags=["weights"])
        weights = list(merged_weights(model))
        self.llm.collective_rpc(load_weights_on_worker, args=(weights,))
        self.llm.reset_prefix_cache()

    def generate(self, prompt_ids, n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 16) -> Rollouts:
        eos = self.tokenizer.eos_token_id
        params = self.api.SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                         max_tokens=max_new_tokens, stop_token_ids=[eos])
        all_prompts, mine = self._pool_prompts([list(p) for p in prompt_ids])
        if self.sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        outs = self.llm.generate([self.api.TokensPrompt(prompt_token_ids=p) for p in all_prompts], params, use_tqdm=False)
        if self.sleep_mode:
            self.llm.sleep(level=2)
        roll = Rollouts([], [], [], [], [])
        for gi, (p, out) in enumerate(zip(prompt_ids, outs[mine])):
            for comp in out.outputs:
                ids = list(comp.token_ids)
                truncated = comp.finish_reason == "length"
                if not truncated and (not ids or ids[-1] != eos):
                    ids.append(eos)  # vLLM strips the stop token; training needs it
                roll.add(p, ids, truncated, gi, self.tokenizer)
        return roll

    def _pool_prompts(self, prompts: list[list[int]]) -> tuple[list[list[int]], slice]:
        """All prompts of this rank's TP group (every member generates them together) and this rank's slice."""
        if self.tp_group is None:
            return prompts, slice(0, len(prompts))
        gathered: list = [None] * torch.distributed.get_world_size(self.tp_group)
        torch.distributed.all_gather_object(gathered, prompts, group=self.tp_group)
        start = sum(len(g) for g in gathered[: torch.distributed.get_rank(self.tp_group)])
        return [p for g in gathered for p in g], slice(start, start + len(prompts))
