"""LoRA in `lco train`: the reference is the policy with adapters disabled (one model in memory),
`model.lora.save: adapter` writes what peft loads, and resume works with both save modes."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke, read_jsonl
from lco_cli.config import LoraConfig, ModelConfig
from lco_cli.rl.update import HiddenStatesLM, Update
from lco_cli.runtime import models
from lco_cli.runtime.lora import ReferenceView

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0.0"]


def train(runner, run="run", *overrides):
    return invoke(runner, "train", "fast.yaml", "--run-dir", run, "train.eval_every=0", *overrides)


def unique_parameter_elements(*modules) -> int:
    """Elements of the distinct parameter tensors reachable from `modules` (shared storage counted once)."""
    seen, total = set(), 0
    for m in modules:
        for p in m.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel()
    return total


@pytest.fixture
def models_in_memory(monkeypatch):
    """At the first behaviour pass (every `prepare` starts with it): parameter elements of policy +
    reference, and the policy's alone."""
    seen: dict = {}
    real = Update.behaviour

    def spy(self, batch, *args, **kwargs):
        if not seen:
            env = self.env
            ref = env.reference
            ref_modules = [ref.policy] if isinstance(ref, ReferenceView) else [ref]
            seen.update(reference=type(ref).__name__, policy=unique_parameter_elements(env.policy),
                        both=unique_parameter_elements(env.policy, *ref_modules))
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(Update, "behaviour", spy)
    return seen


def test_lora_reference_is_the_policy_with_adapters_disabled(runner, run_dir, models_in_memory):
    res = train(runner, "run", "train.steps=1", *LORA)
    assert res.exit_code == 0, res.output
    assert models_in_memory["reference"] == "ReferenceView"
    assert models_in_memory["both"] == models_in_memory["policy"]  # one model in memory, not two
    # kl_ref at step 1 compares the policy with itself minus adapters: peft initialises B = 0, so 0
    assert read_jsonl(run_dir / "train/metrics.jsonl")[0]["kl_ref"] == 0.0


def test_without_lora_the_reference_is_a_second_copy(runner, run_dir, models_in_memory):
    """The control for the test above: the count does change when there is a copy."""
    res = train(runner, "run", "train.steps=1")
    assert res.exit_code == 0, res.output
    assert models_in_memory["reference"] == "HiddenStatesLM"
    base = sum(t.numel() for k, t in load_file(str(run_dir / "sft/final/model.safetensors")).items() if k != "lm_head.weight")
    assert models_in_memory["both"] == 2 * base


def test_reference_view_equals_the_base_model_and_restores_the_adapters(tmp_path):
    d = models.build_tiny("tiny:hidden=32,layers=2,heads=2,kv_heads=2,intermediate=64", 0, tmp_path / "m")
    cfg = ModelConfig(lora=LoraConfig(enabled=True, r=4, dropout=0.0))
    policy = HiddenStatesLM(models.load_model(str(d), cfg, trainable=True))
    base = HiddenStatesLM(models.load_model(str(d), ModelConfig(), trainable=False))
    with torch.no_grad():  # make the adapters matter: B = 0 at init would hide a missing disable
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    view = models.reference_for(policy)
    assert isinstance(view, ReferenceView)
    with torch.no_grad():
        h_adapted = policy(input_ids=ids, attention_mask=mask)
    h_ref = view(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(h_ref, base(input_ids=ids, attention_mask=mask), rtol=0, atol=0)
    assert not torch.allclose(h_adapted, h_ref)
    with torch.no_grad():  # adapters back on, training mode restored
        torch.testing.assert_close(policy(input_ids=ids, attention_mask=mask), h_adapted, rtol=0, atol=0)
    assert policy.training and view.head() is policy.head()
    assert models.reference_for(base) is None


@pytest.mark.parametrize("save", ["merged", "adapter"])
def test_lora_save_modes_and_resume(runner, run_dir, workdir, monkeypatch, save):
    args = ["train.steps=4", "train.checkpoint_every=2", *LORA, f"model.lora.save={save}"]
    shutil.copytree(run_dir, workdir / "run_full")
    assert train(runner, "run_full", *args).exit_code == 0
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "3")
    assert train(runner, "run", *args).exit_code == 130
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    res = train(runner, "run", *args)
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in read_jsonl(run_dir / "train/metrics.jsonl")] == [1, 2, 3, 4]
    final, full = run_dir / "train/final", workdir / "run_full/train/final"
    names = {p.name for p in final.iterdir()}
    if save == "adapter":
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= names
        assert "model.safetensors" not in names
        stage = json.loads((final / "lco_stage.json").read_text())
        assert stage["lora_save"] == "adapter" and stage["base"] == str((run_dir / "sft/final").resolve())
        # peft loads it on its base, by the path peft itself recorded
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        cfg = json.loads((final / "adapter_config.json").read_text())
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"]), str(final))
        assert peft_model.active_adapter == "default"
        lora_keys = load_file(str(final / "adapter_model.safetensors"))
        assert lora_keys and all("lora_" in k for k in lora_keys)
    else:
        assert "model.safetensors" in names and "adapter_config.json" not in names
    # resumed == uninterrupted, compared as the merged models lco loads (adapter dirs are merged on load)
    a = models.load_model(str(final), ModelConfig(), trainable=False).state_dict()
    b = models.load_model(str(full), ModelConfig(), trainable=False).state_dict()
    init = models.load_model(str(run_dir / "sft/final"), ModelConfig(), trainable=False).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)  # same as test_train's resume tolerance
    assert any(not torch.equal(a[k], init[k]) for k in a)  # the adapters trained and were merged


def test_adapter_and_merged_saves_load_to_the_same_model(runner, run_dir, workdir):
    shutil.copytree(run_dir, workdir / "run_merged")
    assert train(runner, "run", "train.steps=2", *LORA, "model.lora.save=adapter").exit_code == 0
    assert train(runner, "run_merged", "train.steps=2", *LORA, "model.lora.save=merged").exit_code == 0
    a = models.load_model(str(run_dir / "train/final"), ModelConfig(), trainable=False).state_dict()
    b = models.load_model(str(workdir / "run_merged/train/final"), ModelConfig(), trainable=False).state_dict()
    for k in b:
        # merging W + (α/r)·B·A in float32 on load vs at save time: the same ops, bit-identical on CPU
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    # and a later stage can start from the adapter folder (eval generates with it)
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.policies=[train]", "eval.limit=4")
    assert res.exit_code == 0, res.output
