"""The vLLM engine's contract, against a fake `LLM` that records every call (vLLM cannot be installed
here): construction arguments, the weight push (LoRA merged, HF names, through `collective_rpc`),
sleep/wake-up ordering, output parsing, and both CLI paths (`train.rollout.engine`, `eval.engine`)."""
from __future__ import annotations

import copy
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

from conftest import invoke, read_jsonl
from lco_cli.config import LoraConfig, ModelConfig
from lco_cli.config.schema import VLLMConfig
from lco_cli.engines import vllm as vllm_engine
from lco_cli.runtime import models

TINY = "tiny:hidden=32,layers=2,heads=2,kv_heads=2,intermediate=64"


class FakeLLM:
    """Records calls in `log`; `generate` answers every prompt with digits, EOS stripped as vLLM does."""

    instances: list["FakeLLM"] = []

    def __init__(self, model, **kwargs):
        self.model_dir, self.kwargs, self.log, self.pushed = model, kwargs, [], []
        FakeLLM.instances.append(self)

    def sleep(self, level=1):
        self.log.append(("sleep", level))

    def wake_up(self, tags=None):
        self.log.append(("wake_up", tuple(tags or ())))

    def reset_prefix_cache(self):
        self.log.append(("reset_prefix_cache",))

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.log.append(("collective_rpc", getattr(method, "__name__", method)))
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=SimpleNamespace(
            load_weights=lambda weights: self.pushed.append({k: v.clone() for k, v in weights}))))
        return [method(worker, *args, **(kwargs or {}))]

    def generate(self, prompts, params, use_tqdm=True):
        self.log.append(("generate", len(prompts), params))
        outs = []
        for p in prompts:
            comps = [SimpleNamespace(token_ids=(5, 6), finish_reason="stop") for _ in range(params.n - 1)]
            comps.append(SimpleNamespace(token_ids=(7,) * params.max_tokens, finish_reason="length"))
            outs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=comps))
        return outs


def fake_api() -> vllm_engine.VLLMApi:
    return vllm_engine.VLLMApi(LLM=FakeLLM, SamplingParams=lambda **kw: SimpleNamespace(**kw),
                               TokensPrompt=lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids})


@pytest.fixture
def lora_policy(tmp_path):
    d = models.build_tiny(TINY, 0, tmp_path / "base")
    cfg = ModelConfig(lora=LoraConfig(enabled=True, r=4, dropout=0.0))
    model = models.load_model(str(d), cfg, trainable=True)
    with torch.no_grad():  # non-zero adapters, so a missing merge would show
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model, models.load_tokenizer(str(d), cfg)


def test_merged_weights_equal_peft_merge_and_unload_with_hf_names(lora_policy):
    model, _ = lora_policy
    ours = dict(vllm_engine.merged_weights(model))
    peft_merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(ours) == set(peft_merged)
    for k in peft_merged:
        # W + ΔW out of place vs peft's in-place merge: the same float32 addition
        torch.testing.assert_close(ours[k], peft_merged[k], rtol=0, atol=1e-7)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the module still has its adapters


def test_engine_contract_with_a_fake_llm(lora_policy, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    model, tok = lora_policy
    settings = VLLMConfig(tensor_parallel_size=1, gpu_memory_utilization=0.42, sleep_mode=True)
    engine = vllm_engine.VLLMEngine(model, tok, 8, settings, api=fake_api())
    llm = engine.llm
    assert llm.kwargs == {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.42, "enable_sleep_mode": True,
                          "distributed_executor_backend": "external_launcher", "seed": 0, "enable_prefix_caching": True}
    # the folder vLLM starts from holds the merged weights under HF names, loadable by transformers
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(llm.model_dir).state_dict()
    merged = dict(vllm_engine.merged_weights(model))
    assert all(torch.equal(start[k], merged[k]) for k in start)
    assert llm.log == [("sleep", 2)]

    engine.sync_weights(model)
    assert llm.log[1:] == [("wake_up", ("weights",)), ("collective_rpc", "load_weights_on_worker"), ("reset_prefix_cache",)]
    assert set(llm.pushed[-1]) == set(merged) and all(torch.equal(llm.pushed[-1][k], merged[k]) for k in merged)

    eos = tok.eos_token_id
    roll = engine.generate([[5, 6, 7], [8, 9]], n=3, temperature=0.6, top_p=0.95, max_new_tokens=4)
    assert llm.log[4] == ("wake_up", ("kv_cache",)) and llm.log[-1] == ("sleep", 2)
    _, n_prompts, params = llm.log[5]
    assert n_prompts == 2 and (params.n, params.temperature, params.top_p, params.max_tokens, params.stop_token_ids) == (
        3, 0.6, 0.95, 4, [eos])
    assert len(roll) == 6 and roll.group == [0, 0, 0, 1, 1, 1]
    assert roll.response_ids[0] == [5, 6, eos] and roll.truncated[:3] == [False, False, True]  # stop token restored
    assert roll.response_ids[2] == [7, 7, 7, 7] and roll.prompt_ids[3] == [8, 9]
    greedy = engine.generate([[5]], n=1, temperature=0.0, top_p=0.5, max_new_tokens=2)
    assert llm.log[-2][2].top_p == 1.0 and len(greedy) == 1  # top_p is meaningless when greedy


def test_eval_engine_loads_the_folder_and_never_sleeps(lora_policy, tmp_path):
    model, tok = lora_policy
    engine = vllm_engine.VLLMEngine(model, tok, 8, VLLMConfig(), source=str(tmp_path / "base"), api=fake_api())
    assert engine.llm.model_dir == str(tmp_path / "base") and engine.llm.kwargs["enable_sleep_mode"] is False
    engine.generate([[5]], n=2, max_new_tokens=3)
    assert [c[0] for c in engine.llm.log] == ["generate"]


def test_tensor_parallel_size_must_divide_the_world(lora_policy, monkeypatch):
    from lco_cli.errors import ConfigError

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    model, tok = lora_policy
    with pytest.raises(ConfigError, match="model.vllm.tensor_parallel_size"):
        vllm_engine.VLLMEngine(model, tok, 8, VLLMConfig(tensor_parallel_size=2), api=fake_api())


@pytest.fixture
def fake_vllm_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr(vllm_engine, "vllm_api", fake_api)
    monkeypatch.delenv("RANK", raising=False)
    FakeLLM.instances.clear()


def test_train_and_eval_through_the_cli_with_the_fake_engine(runner, run_dir, fake_vllm_installed):
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", "train.rollout.engine=vllm", "train.steps=2",
                 "train.eval_every=0", "train.eval_problems=0", "model.vllm.gpu_memory_utilization=0.5")
    assert res.exit_code == 0, res.output
    (llm,) = FakeLLM.instances
    assert llm.kwargs["gpu_memory_utilization"] == 0.5 and llm.kwargs["enable_sleep_mode"] is True
    assert [c[0] for c in llm.log].count("collective_rpc") == 2 and [c[0] for c in llm.log].count("generate") == 2
    first, second = llm.pushed
    init = models.load_model(str(run_dir / "sft/final"), ModelConfig(), trainable=False).state_dict()
    assert all(torch.equal(first[k], init[k]) for k in first)  # step 1 samples from the initial policy
    assert any(not torch.equal(first[k], second[k]) for k in first)  # step 2 from the updated one
    rows = read_jsonl(run_dir / "train/metrics.jsonl")
    assert [r["rollout_samples"] for r in rows] == [8.0, 8.0]  # batch 4 × 2 samples, all from the fake

    FakeLLM.instances.clear()
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.engine=vllm", "eval.policies=[train]", "eval.limit=3")
    assert res.exit_code == 0, res.output
    (llm,) = FakeLLM.instances
    assert llm.model_dir.endswith("train/final") and [c[0] for c in llm.log] == ["generate"]
    results = json.loads((run_dir / "eval/results.json").read_text())
    assert results  # written from the fake's generations


def test_vllm_without_the_extra_is_a_user_error(runner, run_dir):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.engine=vllm", "eval.policies=[sft]", "eval.limit=2")
    assert res.exit_code == 2 and "eval.engine" in res.output and "lco[vllm]" in res.output
