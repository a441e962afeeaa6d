"""Preset system: types, constraints, unknown keys, all errors at once, overrides, bundled presets."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from lco_cli import config
from lco_cli.errors import ConfigError

from conftest import invoke


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.from_dict(data)
    return info.value.details


@pytest.mark.parametrize("key,value,needle", [
    (("sft", "lr"), 0, "sft.lr: must be > 0"),
    (("rm", "lr"), -1e-6, "rm.lr: must be > 0"),
    (("train", "lr"), 0.0, "train.lr: must be > 0"),
    (("train", "beta"), 0, "train.beta: must be > 0"),
    (("eval", "samples"), 0, "eval.samples: must be >= 1"),
    (("eval", "top_p"), 0, "eval.top_p: must be > 0"),
    (("eval", "top_p"), 1.5, "eval.top_p: must be <= 1"),
    (("eval", "temperature"), -0.1, "eval.temperature: must be >= 0"),
    (("train", "algo"), "sac", "train.algo: 'sac' is not one of"),
    (("train", "objective"), "l1", "train.objective: 'l1' is not one of"),
    (("train", "advantage"), "gae", "train.advantage: 'gae' is not one of"),
    (("train", "reward"), "human", "train.reward: 'human' is not one of"),
    (("eval", "benchmarks"), ["arith", "gsm9k"], "eval.benchmarks: 'gsm9k' is not one of"),
    (("sft", "batch_size"), "big", "sft.batch_size: expected int, got 'big'"),
    (("sft", "max_steps"), True, "sft.max_steps: expected int or null"),
])
def test_constraints_name_the_key(key, value, needle):
    section, name = key
    errs = errors_of({section: {name: value}})
    assert any(needle in e for e in errs), errs


def test_rollout_engine_enum_and_nested_unknown():
    errs = errors_of({"train": {"rollout": {"engine": "sglang", "bogus": 1}}})
    assert any("train.rollout.engine: 'sglang' is not one of hf, vllm" in e for e in errs)
    assert any("train.rollout.bogus: unknown key" in e for e in errs)


def test_unknown_keys_everywhere_and_all_errors_at_once():
    errs = errors_of({"colour": 1, "sft": {"lrr": 1}, "train": {"beta": -1, "algo": "x"}, "eval": {"samples": 0}})
    assert len(errs) == 5
    assert errs[0].startswith("colour: unknown key")
    assert any(e.startswith("sft.lrr: unknown key") for e in errs)


def test_floats_accept_yaml_exponent_strings():
    p = config.from_dict({"rm": {"lr": "1e-6"}})
    assert p.rm.lr == 1e-6


def test_defaults_follow_the_paper():
    p = config.Preset()
    assert (p.train.beta, p.train.rollout.temperature, p.train.rollout.top_p) == (1.0, 0.6, 0.95)
    assert (p.train.algo, p.train.objective, p.train.advantage) == ("lco", "kld", "dpo")
    assert (p.rm.lr, p.rm.epochs, p.rm.beta) == (1e-6, 1.0, 0.1)
    assert p.train.advantage_topk is None and p.train.advantage_center is True


def test_cross_checks():
    errs = errors_of({"train": {"algo": "grpo", "samples_per_prompt": 1, "advantage_norm": "none"}})
    assert any("train.samples_per_prompt" in e for e in errs)
    errs = errors_of({"rm": {"pairs": {"source": "file"}}})
    assert any("rm.pairs.path: required" in e for e in errs)
    errs = errors_of({"train": {"algo_args": {"clip": 0.1}}})
    assert any("train.algo_args" in e for e in errs)
    errs = errors_of({"task": {"op": "mul", "slip_rate": 0.5}})
    assert errs == ["task.slip_rate: the carry slip is defined for task.op 'add' only"]
    assert config.from_dict({"task": {"op": "add", "slip_rate": 0.5}}).task.slip_rate == 0.5


def test_override_parsing():
    assert config.parse_override("train.beta=0.5") == (["train", "beta"], 0.5)
    assert config.parse_override("eval.policies=[sft,train]") == (["eval", "policies"], ["sft", "train"])
    assert config.parse_override("model.policy=tiny:hidden=64") == (["model", "policy"], "tiny:hidden=64")
    assert config.parse_override("train.advantage_topk=null") == (["train", "advantage_topk"], None)
    with pytest.raises(ConfigError, match="override 'train.beta': expected KEY=VALUE"):
        config.parse_override("train.beta")
    _, p = config.load("tiny", ["train.beta=0.25", "eval.benchmarks=[arith]", "sft.data.limit=10"])
    assert p.train.beta == 0.25 and p.sft.data.limit == 10


def test_every_bundled_preset_validates():
    presets = config.bundled_presets()
    assert "tiny" in presets
    for name in presets:
        _, p = config.load(name)
        assert p.name


def test_field_docs_cover_every_field():
    rows = config.field_docs(config.Preset)
    keys = {r[0] for r in rows}
    for k in ("train.beta", "train.rollout.engine", "eval.top_p", "rm.pairs.source", "model.lora.r"):
        assert k in keys
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]


def test_docs_presets_md_is_current():
    from lco_cli.docgen import presets_markdown

    doc = Path(__file__).parents[1] / "docs" / "presets.md"
    assert doc.read_text() == presets_markdown(), "regenerate with: python -m lco_cli.docgen > docs/presets.md"


# ------------------------------------------------------------------ through the CLI


def test_validate_cli_ok_and_errors(runner, workdir):
    ok = invoke(runner, "validate", "tiny")
    assert ok.exit_code == 0 and "valid" in ok.output
    bad = invoke(runner, "validate", "tiny", "train.beta=0", "eval.top_p=3", "nope.x=1")
    assert bad.exit_code == 2
    assert "train.beta: must be > 0" in bad.output and "eval.top_p" in bad.output and "nope: unknown key" in bad.output
    assert "Traceback" not in bad.output


def test_malformed_override_exit_2(runner, workdir):
    res = invoke(runner, "validate", "tiny", "trainbeta")
    assert res.exit_code == 2 and "override 'trainbeta'" in res.output


def test_unknown_preset_and_bad_yaml(runner, workdir):
    res = invoke(runner, "validate", "nosuchpreset")
    assert res.exit_code == 2 and "unknown preset 'nosuchpreset'" in res.output
    (workdir / "bad.yaml").write_text("sft: [unclosed")
    res = invoke(runner, "validate", "bad.yaml")
    assert res.exit_code == 2 and "not valid YAML" in res.output
    (workdir / "typo.yaml").write_text(yaml.safe_dump({"train": {"betta": 1}}))
    res = invoke(runner, "validate", "typo.yaml")
    assert res.exit_code == 2 and "train.betta: unknown key" in res.output


def test_presets_list_and_show(runner, workdir):
    res = invoke(runner, "presets")
    assert res.exit_code == 0 and "tiny" in res.output
    res = invoke(runner, "presets", "show", "tiny", "train.beta=2")
    assert res.exit_code == 0
    assert yaml.safe_load(res.output)["train"]["beta"] == 2.0


def test_subprocess_user_error_has_no_traceback(workdir):
    res = subprocess.run([sys.executable, "-m", "lco_cli", "validate", "tiny", "train.beta=-1"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "train.beta" in res.stderr and "Traceback" not in res.stderr + res.stdout


def test_wheel_ships_presets(tmp_path):
    """A wheel (not only an editable install) carries the bundled presets inside lco_cli/presets."""
    root = Path(__file__).parents[1]
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {res.stderr[-300:]}")
    wheel = next(tmp_path.glob("lco-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lco_cli/presets/tiny.yaml" in names
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    code = "import lco_cli, lco_cli.config as c; print(lco_cli.__file__); print(sorted(c.bundled_presets()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(target)), out.stdout  # the wheel's copy, not the checkout
    assert "tiny" in out.stdout


def test_vllm_engine_needs_the_extra_and_cpu_path_never_imports_it(runner, workdir):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    res = invoke(runner, "validate", "tiny", "train.rollout.engine=vllm")
    assert res.exit_code == 2 and "train.rollout.engine" in res.output and "lco[vllm]" in res.output
    assert "vllm" not in sys.modules


def test_algo_group_size_must_follow_samples_per_prompt():
    errs = errors_of({"train": {"algo": "grpo", "samples_per_prompt": 4, "algo_args": {"group_size": 8}}})
    assert any(e.startswith("train.algo_args.group_size: 8 conflicts") for e in errs)
    config.from_dict({"train": {"algo": "grpo", "samples_per_prompt": 4, "algo_args": {"group_size": 4}}})
