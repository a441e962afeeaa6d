"""The `math` and `prompts` tasks on local files of the hub schema; bad input exits 2/3 naming key and file."""
from __future__ import annotations

import json
import logging

import pytest
import yaml
from conftest import FAST, invoke

from lco_cli.config import TaskConfig
from lco_cli.data.pairs import merge_samples, pairs_from_samples, sampler_refs
from lco_cli.data.sft import task_demo_pairs
from lco_cli.errors import ConfigError, MissingArtifactError
from lco_cli.tasks import get_task
from lco_cli.tasks.math import reference_answer

ROWS = [  # MATH schema; answers in LaTeX as MATH writes them
    {"problem": "What is $\\frac{1}{4}+\\frac{1}{4}$?", "solution": "It is $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
    {"problem": "Compute $3 \\times 4$.", "solution": "First $\\boxed{7}$ was wrong; $3 \\times 4 = \\boxed{12}$."},
    {"problem": "No boxed answer here.", "solution": "The answer is twelve."},
    {"problem": "Solve $2x = 3$.", "solution": "$x = \\boxed{\\dfrac{3}{2}}$", "unique_id": "alg/1"},
    {"problem": "Empty box.", "solution": "$\\boxed{}$"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def math_cfg(source, **kw) -> TaskConfig:
    return TaskConfig(name="math", source=str(source), n_test=kw.pop("n_test", 1), **kw)


def test_reference_answer_is_the_last_box_or_the_answer_field():
    assert [reference_answer(r, None) for r in ROWS] == ["\\frac{1}{2}", "12", None, "\\dfrac{3}{2}", None]
    assert reference_answer({"answer": 27.0}, "answer") == "27"  # parquet/JSON floats
    assert reference_answer({"answer": " "}, "answer") is None


def test_math_rows_parse_skip_and_count(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="lco_cli.tasks")
    task = get_task(math_cfg(write_jsonl(tmp_path / "m.jsonl", ROWS)), 0)
    examples = sorted(task.train + task.test, key=lambda e: e.prompt)
    assert len(examples) == 3 and len(task.test) == 1
    assert {e.answer for e in examples} == {"\\frac{1}{2}", "12", "\\dfrac{3}{2}"}
    assert {e.id for e in examples} == {"0", "1", "alg/1"}  # the row's id when it has one, else its position
    assert all(e.demo == e.row["solution"] for e in examples)  # SFT reference = the MATH solution
    source = tmp_path / "m.jsonl"
    assert [f"warning: task.source: skipped 2 of 5 rows of {source} without an extractable answer"] == \
        [r.getMessage() for r in caplog.records]


def test_math_verifier_uses_math_verify_single_and_batch(tmp_path):
    task = get_task(math_cfg(write_jsonl(tmp_path / "m.jsonl", ROWS), n_test=2), 0)
    half = next(e for e in task.train + task.test if e.answer == "\\frac{1}{2}")
    responses = ["So the answer is $\\boxed{0.5}$.", "I get \\boxed{\\frac{2}{4}}", "\\boxed{1/3}", "no idea"]
    expected = [("0.5", True), ("\\frac{2}{4}", True), ("1/3", False)]
    assert [task.check(half, r) for r in responses[:3]] == expected
    verdicts = task.check_batch([half] * 4, responses)
    assert verdicts[:3] == expected and verdicts[3][1] is False


def test_answer_field_and_the_split_seed(tmp_path):
    rows = [{"question": f"{i}+{i}?", "answer": 2 * i} for i in range(20)]
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    task = get_task(math_cfg(source, n_test=5, prompt_field="question", answer_field="answer"), 0)
    assert len(task.train) == 15 and all(e.answer == str(2 * int(e.prompt.split("+")[0])) for e in task.train)
    assert all(e.demo is None for e in task.train)  # no `solution`: no SFT reference
    other = get_task(math_cfg(source, n_test=5, prompt_field="question", answer_field="answer", split_seed=1), 0)
    assert {e.id for e in task.test} != {e.id for e in other.test}
    again = get_task(math_cfg(source, n_test=5, prompt_field="question", answer_field="answer"), 9)
    assert [e.id for e in again.test] == [e.id for e in task.test]
    limited = get_task(math_cfg(source, n_test=5, prompt_field="question", answer_field="answer", limit=8), 0)
    assert len(limited.train) + len(limited.test) == 8


def test_a_folder_of_files_and_parquet(tmp_path):
    import datasets

    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "a.jsonl", ROWS[:2])
    datasets.Dataset.from_list([{"problem": "p", "solution": "\\boxed{5}"}]).to_parquet(str(tmp_path / "d" / "b.parquet"))
    task = get_task(math_cfg(tmp_path / "d"), 0)
    assert sorted(e.answer for e in task.train + task.test) == ["12", "5", "\\frac{1}{2}"]


@pytest.mark.parametrize("content,message", [
    (b"", "task.source: {f} is empty"),
    (b"\xff\xfe\x00bad", "task.source: {f} is not UTF-8 text"),
    (b'{"problem": "a", "solution": "\\\\boxed{1}"}\n{not json\n', "task.source: {f} line 2 is not valid JSON"),
    (b'["a list"]\n', "task.source: {f} row 1 is not a JSON object"),
    (b'{"problem": "a", "solution": "none"}\n', "task.source: no row of {f} has a \\boxed{{}} answer in 'solution' (1 rows read)"),
    (b'{"question": "a", "solution": "\\\\boxed{1}"}\n', "task.prompt_field: {f} row 1 has no field 'problem'"),
    (b'{"problem": "a"}\n', "task.answer_field: {f} row 1 has no field 'solution' (MATH schema; or set task.answer_field)"),
])
def test_bad_math_sources_name_key_and_file(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        get_task(math_cfg(path, n_test=1), 0)
    assert info.value.message.startswith(message.format(f=path)), info.value.message


def test_missing_source_is_exit_3_and_too_large_n_test_exit_2(tmp_path):
    with pytest.raises(MissingArtifactError, match="task.source: file not found: .*nope.jsonl"):
        get_task(math_cfg(tmp_path / "nope.jsonl"), 0)
    with pytest.raises(ConfigError, match="task.n_test: 3 held-out examples leave none to train on"):
        get_task(math_cfg(write_jsonl(tmp_path / "m.jsonl", ROWS), n_test=3), 0)


def test_bad_task_file_through_the_cli_exits_2_without_traceback(runner, workdir):
    (workdir / "bad.jsonl").write_text('{"problem": "a", "solution": "no box"}\n')
    preset = {**FAST, "task": {"name": "math", "source": "bad.jsonl", "n_test": 1}, "eval": {**FAST["eval"], "benchmarks": ["task"]}}
    (workdir / "p.yaml").write_text(yaml.safe_dump(preset))
    res = invoke(runner, "sft", workdir / "p.yaml", "--run-dir", workdir / "run")
    assert res.exit_code == 2, res.output
    assert "error: task.source: no row of bad.jsonl has a \\boxed{} answer" in res.output
    assert "Traceback" not in res.output


def test_render_uses_the_chat_template_and_the_cot_instruction(tmp_path, caplog):
    from lco_cli.evals.benchmarks import COT_INSTRUCTION
    from lco_cli.tasks import tiny_math

    # A real byte-level BPE tokenizer with a Qwen-style template, and the same without a template.
    templated = tiny_math.train_tokenizer(tiny_math.corpus(tiny_math.generate_rows(200)), 300)
    plain = tiny_math.train_tokenizer(tiny_math.corpus(tiny_math.generate_rows(200)), 300)
    plain.chat_template = None
    task = get_task(math_cfg(write_jsonl(tmp_path / "m.jsonl", ROWS)), 0)
    ex = task.train[0]
    assert task.render(ex, templated) == f"<|im_start|>user\n{ex.prompt}\n{COT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="lco_cli.tasks")
    assert task.render(ex, plain) == f"Question: {ex.prompt}\n{COT_INSTRUCTION}\nAnswer: "
    task.render(ex, plain)
    assert [r.getMessage() for r in caplog.records] == ["warning: task math: the tokenizer has no chat template; prompts are plain text"]


def test_task_demo_pairs_render_prompts_and_skip_missing_demos(tmp_path):
    task = get_task(math_cfg(write_jsonl(tmp_path / "m.jsonl", ROWS)), 0)
    pairs = task_demo_pairs(task, tokenizer=None, limit=1)
    assert len(pairs) == 1 and pairs[0].response == task.train[0].demo and pairs[0].prompt.startswith("Question: ")
    rows = [{"problem": f"{i}?", "answer": i} for i in range(4)]
    no_demos = get_task(math_cfg(write_jsonl(tmp_path / "a.jsonl", rows), answer_field="answer"), 0)
    with pytest.raises(ConfigError, match="sft.data.source: task 'math' has no reference responses"):
        task_demo_pairs(no_demos, None)


def test_pairs_from_several_samplers_are_verifier_labelled():
    assert sampler_refs("init") == ["init"] and sampler_refs(["a/b", "sft"]) == ["a/b", "sft"]
    small = ([["\\boxed{1}", "\\boxed{2}"]], [[True, False]])
    large = ([["\\boxed{3}"]], [[False]])
    responses, verdicts = merge_samples([small, large])
    assert responses == [["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"]] and verdicts == [[True, False, False]]
    pairs = pairs_from_samples(["p"], responses, verdicts, max_per_prompt=4, max_pairs=10, eval_fraction=0, seed=0)
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("\\boxed{1}", "\\boxed{2}"), ("\\boxed{1}", "\\boxed{3}")]
    with pytest.raises(ValueError, match="different numbers of prompts"):
        merge_samples([small, ([], [])])


# --------------------------------------------------------------------------- prompts


def test_prompts_task_fields_messages_and_demos(tmp_path):
    rows = [{"instruction": "Write a haiku.", "output": "Leaves fall."},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}], "output": "Hey."},
            {"instruction": "Name a prime.", "output": "7"}]
    source = write_jsonl(tmp_path / "p.jsonl", rows)
    task = get_task(TaskConfig(name="prompts", source=str(source), n_test=1, response_field="output"), 0)
    examples = {e.prompt: e for e in task.train + task.test}
    assert set(examples) == {"Write a haiku.", "Hi?", "Name a prime."}
    assert examples["Hi?"].demo == "Hey." and examples["Hi?"].answer is None and not task.has_verifier
    # No template: the conversation up to its last user turn as plain text (the trailing answer dropped).
    assert task.render(examples["Hi?"], None) == "system: Be brief.\nuser: Hi?\nassistant: "
    assert task.render(examples["Name a prime."], None) == "Name a prime."
    with pytest.raises(NotImplementedError):
        task.check(examples["Hi?"], "x")
    no_demo = get_task(TaskConfig(name="prompts", source=str(source), n_test=1), 0)
    assert all(e.demo is None for e in no_demo.train)


def test_prompts_task_errors_name_the_key(tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(ConfigError, match=r"task.prompt_field: .*p.jsonl row 1 has neither 'instruction' nor 'messages'"):
        get_task(TaskConfig(name="prompts", source=str(source), n_test=1), 0)
    with pytest.raises(ConfigError, match=r"task.response_field: .*row 1 has no field 'output'"):
        get_task(TaskConfig(name="prompts", source=str(source), n_test=1, prompt_field="text", response_field="output"), 0)
