"""Task registry, user tasks and reward functions from Python, validate's task checks, bundled presets."""
from __future__ import annotations

import json
import logging
import os
import sys
import textwrap

import pytest
import yaml
from conftest import FAST, invoke, write_pairs

from lco_cli.config import TaskConfig, bundled_presets, from_dict
from lco_cli.errors import ConfigError
from lco_cli.tasks import TASKS, ArithTask, Example, MathTask, PromptsTask, Task, get_task, task_class
from lco_cli.tasks.rewards import is_reward_ref, load_reward_fn

USER_MODULE = '''
from lco_cli.tasks import Example, Task

class Echo(Task):
    """Repeat the word: a verifiable toy task built by a user."""
    has_verifier = True
    max_new_tokens = 8

    def __init__(self, cfg, seed):
        words = ["alpha", "beta", "gamma", "delta"]
        self.train = [Example(w, f"say {w}", w, w) for w in words[:3]]
        self.test = [Example(w, f"say {w}", w, w) for w in words[3:]]

    def check(self, example, response):
        got = response.strip()
        return got, got == example.answer

def score(prompt, completion, row):
    return float(len(completion)) - row.get("bias", 0)

def bad_arity(prompt):
    return 0.0

def not_a_number(prompt, completion, row):
    return "high"

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `my_tasks_mod` written in tmp and importable, removed from sys.modules afterwards."""
    (tmp_path / "my_tasks_mod.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_tasks_mod"
    sys.modules.pop("my_tasks_mod", None)


def test_registry_holds_the_builtin_tasks():
    assert {"arith", "math", "prompts"} <= set(TASKS)
    assert (task_class("arith"), task_class("math"), task_class("prompts")) == (ArithTask, MathTask, PromptsTask)
    assert ArithTask.has_verifier and MathTask.has_verifier and not PromptsTask.has_verifier
    assert ArithTask.default_max_new_tokens(TaskConfig()) == 16
    assert MathTask.default_max_new_tokens(TaskConfig(name="math")) == 2048


def test_arith_through_the_registry_is_todays_task():
    """get_task(arith) builds exactly what ArithTask built before the registry (tiny's data)."""
    cfg = TaskConfig(name="arith", op="add", digits=2, n_test=400, slip_rate=0.6)
    task, direct = get_task(cfg, seed=3), ArithTask("add", 2, 400, seed=0, slip_rate=0.6)
    assert [(e.id, e.prompt, e.answer, e.demo) for e in task.train] == [(e.id, e.prompt, e.answer, e.demo) for e in direct.train]
    assert [e.id for e in task.test] == [e.id for e in direct.test]
    assert task.render(task.test[0], tokenizer=None) == task.test[0].prompt  # plain prompt, no template
    ex = task.test[0]
    assert task.check_batch([ex, ex], [ex.answer, "x"]) == [(ex.answer, True), (None, False)]


def test_split_seed_moves_the_split_and_seed_does_not():
    a, b = get_task(TaskConfig(op="add", n_test=50), 0), get_task(TaskConfig(op="add", n_test=50, split_seed=1), 0)
    assert [e.id for e in a.test] != [e.id for e in b.test]
    assert [e.id for e in get_task(TaskConfig(op="add", n_test=50), 7).test] == [e.id for e in a.test]


def test_register_task_adds_a_name_and_refuses_a_clash():
    from lco_cli.tasks import register_task

    @register_task("test-registry-tmp")
    class Tmp(Task):
        def __init__(self, cfg, seed):
            self.train, self.test = [Example("1", "p")], [Example("2", "q")]

    try:
        assert get_task(TaskConfig(name="test-registry-tmp"), 0).train[0].prompt == "p"
        with pytest.raises(ValueError, match="already registered"):
            register_task("test-registry-tmp")(type("Other", (Task,), {}))
    finally:
        TASKS.pop("test-registry-tmp")


def test_user_task_is_imported_only_when_named(user_module):
    assert user_module not in sys.modules
    from_dict({"task": {"name": "arith"}})
    assert user_module not in sys.modules
    task = get_task(TaskConfig(name=f"{user_module}:Echo"), 0)
    assert user_module in sys.modules
    assert [e.prompt for e in task.train] == ["say alpha", "say beta", "say gamma"]
    assert task.check_batch(task.test, ["delta "]) == [("delta", True)]
    assert task.name == f"{user_module}:Echo"


@pytest.mark.parametrize("name,message", [
    ("no_such_mod_xyz:Task", "task.name: cannot import module 'no_such_mod_xyz'"),
    ("{mod}:Missing", "task.name: module '{mod}' has no attribute 'Missing'"),
    ("{mod}:score", "task.name: '{mod}:score' is not a subclass of lco_cli.tasks.Task"),
    ("mathy", "task.name: unknown task 'mathy' (registered: arith, math, prompts"),
])
def test_bad_task_names_exit_2_naming_the_key(runner, workdir, user_module, name, message):
    res = invoke(runner, "validate", "tiny", f"task.name={name.format(mod=user_module)}")
    assert res.exit_code == 2
    assert message.format(mod=user_module) in res.output
    assert "Traceback" not in res.output


def test_user_task_validates_through_the_cli(runner, workdir, user_module):
    res = invoke(runner, "validate", "tiny", f"task.name={user_module}:Echo", "task.slip_rate=0", "task.op=mul",
                 "eval.benchmarks=[task]")  # tiny names 'arith', the arith task's split
    assert res.exit_code == 0, res.output


def test_reward_function_from_a_module(user_module):
    assert is_reward_ref(f"{user_module}:score") and not is_reward_ref("rm") and not is_reward_ref("verifier")
    fn = load_reward_fn(f"{user_module}:score")
    assert fn("2+2=", "four", {"bias": 1}) == 3.0
    with pytest.raises(ConfigError, match="returned 'high'"):
        load_reward_fn(f"{user_module}:not_a_number")("p", "c", {})


@pytest.mark.parametrize("ref,message", [
    ("{mod}:bad_arity", "train.reward: '{mod}:bad_arity' must accept (prompt, completion, row)"),
    ("{mod}:NOT_CALLABLE", "train.reward: '{mod}:NOT_CALLABLE' is not callable"),
    ("{mod}:nope", "train.reward: module '{mod}' has no attribute 'nope'"),
    ("no_such_mod_xyz:score", "train.reward: cannot import module 'no_such_mod_xyz'"),
    ("score", "train.reward: 'score' is not 'package.module:Name'"),
])
def test_reward_function_errors_name_the_key(user_module, ref, message):
    with pytest.raises(ConfigError) as info:
        load_reward_fn(ref.format(mod=user_module))
    assert info.value.message.startswith(message.format(mod=user_module))


# --------------------------------------------------------------------------- lco validate


@pytest.mark.parametrize("ref,message", [
    ("no_such_module:score", "train.reward: cannot import module 'no_such_module' for 'no_such_module:score': "
                             "ModuleNotFoundError: No module named 'no_such_module'"),
    ("{mod}:nope", "train.reward: module '{mod}' has no attribute 'nope'"),
    ("{mod}:NOT_CALLABLE", "train.reward: '{mod}:NOT_CALLABLE' is not callable"),
    ("no_such_module:Task", "task.name: cannot import module 'no_such_module'"),
])
def test_validate_imports_user_references_as_the_stages_do(runner, workdir, user_module, ref, message):
    """A reward function or task class that the stage could not import fails validate (exit 2, naming the key)."""
    key = "task.name" if message.startswith("task.name") else "train.reward"
    res = invoke(runner, "validate", "tiny", f"{key}={ref.format(mod=user_module)}")
    assert res.exit_code == 2, res.output
    assert message.format(mod=user_module) in res.output and "Traceback" not in res.output


ENTRY_POINT = "import sys\nfrom lco_cli.cli import main\nsys.exit(main())\n"  # what `pip install` writes as bin/lco


@pytest.mark.parametrize("how", ["python -m", "entry point"])
def test_a_package_in_the_current_directory_imports(tmp_path, monkeypatch, how):
    """`train.reward: mywp.rewards:score` run from the folder holding mywp/ imports under `python -m lco_cli`
    and under the `lco` script alike (whose sys.path holds the script's folder, not the current one)."""
    import subprocess
    from pathlib import Path

    from lco_cli.tasks import import_ref

    project, bin_dir = tmp_path / "project", tmp_path / "bin"
    (project / "mywp").mkdir(parents=True)
    bin_dir.mkdir()
    (project / "mywp" / "__init__.py").write_text("")
    (project / "mywp" / "rewards.py").write_text("def score(prompt, completion, row):\n    return 1.0\n")
    (bin_dir / "lco").write_text(ENTRY_POINT)
    launcher = ["-m", "lco_cli"] if how == "python -m" else [str(bin_dir / "lco")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    res = subprocess.run([sys.executable, *launcher, "validate", "tiny", "train.reward=mywp.rewards:score"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(project))])
    try:
        assert import_ref("mywp.rewards:score", "train.reward")("p", "c", {}) == 1.0
    finally:
        for mod in ("mywp", "mywp.rewards"):
            sys.modules.pop(mod, None)


def validate(runner, workdir, data: dict, *overrides):
    path = workdir / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return invoke(runner, "validate", path, *overrides)


def test_prompts_task_rejects_verifier_reward_self_pairs_and_missing_demos(runner, workdir):
    (workdir / "prompts.jsonl").write_text('{"instruction": "Say hi.", "output": "hi"}\n')  # validate checks it exists
    no_bench = {**FAST["eval"], "benchmarks": []}  # an instruction task has no held-out verdicts
    res = validate(runner, workdir, {**FAST, "task": {"name": "prompts", "source": "prompts.jsonl", "n_test": 2}, "eval": no_bench})
    assert res.exit_code == 2
    for line in ("train.reward: task 'prompts' has no verifier; use train.reward: rm",
                 "rm.pairs.source: task 'prompts' has no verifier; use rm.pairs.source: file or hub",
                 "sft.data.source: task 'prompts' has no reference responses"):
        assert line in res.output
    write_pairs(workdir / "pairs.jsonl")  # validate checks that the files a preset names exist
    ok = validate(runner, workdir, {**FAST, "task": {"name": "prompts", "source": "prompts.jsonl", "response_field": "output"},
                                    "eval": no_bench},
                  "train.reward=rm", "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl")
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("task,message", [
    ({"name": "math", "op": "add"}, "task.op: not used by task 'math'"),
    ({"name": "math", "digits": 3}, "task.digits: not used by task 'math'"),
    ({"name": "math", "response_field": "x"}, "task.response_field: not used by task 'math'"),
    ({"name": "prompts", "source": "a.jsonl", "answer_field": "x"}, "task.answer_field: not used by task 'prompts'"),
    ({"name": "prompts"}, "task.source: required for task 'prompts'"),
    ({"name": "arith", "source": "a.jsonl"}, "task.source: not used by task 'arith'"),
])
def test_keys_of_another_task_are_errors(task, message):
    with pytest.raises(ConfigError) as info:
        from_dict({"task": task, "train": {"reward": "rm"}, "rm": {"pairs": {"source": "file", "path": "p.jsonl"}},
                   "sft": {"data": {"source": "s.jsonl"}}})
    assert [d for d in info.value.details if d.startswith(message)], info.value.details


def test_empty_sampler_list_is_an_error():
    with pytest.raises(ConfigError) as info:
        from_dict({"rm": {"pairs": {"sampler": []}}})
    assert "rm.pairs.sampler: an empty list (name at least one model)" in info.value.details
    assert from_dict({"rm": {"pairs": {"sampler": ["sft", "org/big"]}}}).rm.pairs.sampler == ["sft", "org/big"]


def test_small_generation_caps_warn_but_validate(runner, workdir, caplog):
    caplog.set_level(logging.WARNING, logger="lco_cli.tasks")
    (workdir / "m.jsonl").write_text('{"problem": "1+1?", "solution": "\\\\boxed{2}"}\n')  # validate checks it exists
    res = validate(runner, workdir, {**FAST, "task": {"name": "math", "source": "m.jsonl"}, "eval": {**FAST["eval"], "benchmarks": ["task"]}})
    assert res.exit_code == 0, res.output
    warned = [r.getMessage() for r in caplog.records]
    # FAST caps generation at 6 tokens; math responses need the paper's 2,048 (warned below 512).
    for key in ("train.rollout.max_new_tokens=6", "rm.pairs.max_new_tokens=6", "eval.max_new_tokens=6"):
        assert any(m.startswith(f"warning: {key} is too small for task 'math'") for m in warned), warned
    caplog.clear()
    assert validate(runner, workdir, FAST).exit_code == 0  # arith: 6 tokens hold every 2-digit sum
    assert not caplog.records


# --------------------------------------------------------------------------- bundled presets


PRESETS = ["tiny", "tiny-compare", "tiny-math", "qwen2.5-3b-math", "qwen3-4b-math", "qwen2.5-1.5b-math-verifier",
           "qwen3-1.7b-math-verifier", "llama3.2-3b-qafeedback", "qwen3-4b-alpaca"]

# QA-Feedback is not on the hub: its preset reads the released files from data/qa_feedback/ (docs/reproduce.md).
# A row of each, in the released fields, stands in for them (validate reads files, never models).
QA_FEEDBACK_FILES = {
    "train.json": [{"prompt": "question: Who wrote Hamlet? context: ..."}],
    "sft_chosen_1k.jsonl": [{"prompt": "question: Who wrote Hamlet?", "response": "Shakespeare wrote it."}],
    "preference_pairs.jsonl": [{"prompt": "question: Who wrote Hamlet?", "chosen": "Shakespeare.", "rejected": "Marlowe."}],
    "test.json": [{"question": "Who wrote Hamlet?", "prompt": "question: Who wrote Hamlet? context: ..."}],
}


@pytest.mark.parametrize("name", PRESETS)
def test_every_bundled_preset_validates_offline(runner, workdir, name, caplog):
    caplog.set_level(logging.WARNING)
    if name == "llama3.2-3b-qafeedback":
        (workdir / "data/qa_feedback").mkdir(parents=True)
        for file, rows in QA_FEEDBACK_FILES.items():
            text = json.dumps(rows) if file.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows)
            (workdir / "data/qa_feedback" / file).write_text(text)
    res = invoke(runner, "validate", name)
    assert res.exit_code == 0, res.output
    assert f"{name}: valid" in res.output
    assert not [r for r in caplog.records if r.getMessage().startswith("warning")]  # caps fit their tasks


def test_presets_lists_every_bundled_preset_with_a_description(runner):
    assert set(PRESETS) == set(bundled_presets())
    res = invoke(runner, "presets")
    assert res.exit_code == 0
    for name, path in bundled_presets().items():
        data = yaml.safe_load(path.read_text())
        assert data["description"] and "\n" not in data["description"]
        assert name in res.output


def test_paper_presets_carry_the_paper_settings():
    """§5: LCO β 1.0 / lr 5e-6, T 0.6, top-p 0.95, 2,048 tokens, RM lr 1e-6 one epoch, SFT 1,000 one epoch."""
    from lco_cli.config import load

    for name in ("qwen2.5-3b-math", "qwen3-4b-math", "qwen2.5-1.5b-math-verifier", "qwen3-1.7b-math-verifier"):
        p = load(name)[1]
        assert (p.train.beta, p.train.lr, p.train.rollout.temperature, p.train.rollout.top_p) == (1.0, 5e-6, 0.6, 0.95)
        assert p.train.rollout.max_new_tokens == p.eval.max_new_tokens == 2048
        assert (p.rm.lr, p.rm.epochs, p.sft.data.limit, p.sft.epochs) == (1e-6, 1.0, 1000, 1.0)
        assert p.task.name == "math" and p.task.n_test == 500 and p.train.samples_per_prompt == 1
    assert load("qwen2.5-3b-math")[1].rm.init_from == "Qwen/Qwen2.5-7B"
    assert load("qwen3-4b-math")[1].rm.init_from == "Qwen/Qwen3-8B"
    verifier = load("qwen2.5-1.5b-math-verifier")[1].train
    assert (verifier.advantage, verifier.reward) == ("sparse", "verifier")


def test_the_docs_examples_run(tmp_path, monkeypatch, runner, workdir):
    """docs/tasks.md's user task and reward function, written out as my_pkg, work as documented."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "tasks.md").read_text()
    blocks = dict(re.findall(r"```python\n# (my_pkg/\w+\.py)\n(.*?)```", doc, re.S))
    assert set(blocks) == {"my_pkg/tasks.py", "my_pkg/rewards.py"}
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    for name, code in blocks.items():
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        task = get_task(TaskConfig(name="my_pkg.tasks:Capitals", n_test=1), 0)
        assert task.check(task.test[0], "nairobi.") == ("nairobi", True)
        assert task.render(task.test[0], None) == "What is the capital of Kenya?"
        assert load_reward_fn("my_pkg.rewards:score")("p", "about cats", {"keyword": "cats"}) == 1.0
        assert invoke(runner, "validate", "tiny", "task.name=my_pkg.tasks:Capitals", "task.op=mul", "task.slip_rate=0",
                      "task.n_test=1", "eval.benchmarks=[task]").exit_code == 0
    finally:
        for mod in ("my_pkg", "my_pkg.tasks", "my_pkg.rewards"):
            sys.modules.pop(mod, None)


def test_greedy_accuracy_renders_through_the_task_and_uses_its_batch_verifier(user_module, tmp_path):
    """Task-generic held-out accuracy: prompts come from render(), verdicts from check_batch()."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lco_cli.runtime.models import build_tiny
    from lco_cli.tasks import greedy_accuracy

    base = build_tiny("tiny:hidden=16,layers=1,heads=2,kv_heads=2,intermediate=32", 0, tmp_path / "tiny")
    model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    task = get_task(TaskConfig(name=f"{user_module}:Echo"), 0)
    seen = {}
    task.render = lambda ex, t: seen.setdefault("rendered", []).append(ex.id) or f"R {ex.prompt}"
    task.check_batch = lambda exs, rs, timeout=5.0: seen.setdefault("batches", []).append(len(rs)) or [(r, True) for r in rs]
    out = greedy_accuracy(model, tok, task, n_problems=5, max_new_tokens=2)
    assert out == {"heldout_acc": 1.0, "n_problems": 1} and seen == {"rendered": ["delta"], "batches": [1]}
    task.check_batch = lambda exs, rs, timeout=5.0: [(r, False) for r in rs]
    assert greedy_accuracy(model, tok, task, n_problems=5, max_new_tokens=2)["heldout_acc"] == 0.0
    task.has_verifier = False
    assert greedy_accuracy(model, tok, task, n_problems=5) == {"heldout_acc": None, "n_problems": 0}

