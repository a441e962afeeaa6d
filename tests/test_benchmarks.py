"""Tests of lco_cli.evals.benchmarks on small synthetic files with each hub dataset's schema."""
from __future__ import annotations

import json

import pytest

from lco_cli.evals import benchmarks as B
from lco_cli.evals.benchmarks import COT_INSTRUCTION, Benchmark, Problem, get_benchmark, register

# Our own toy items (benchmark problems are not ours to ship); answers mix numbers and LaTeX.
ITEMS = [
    ("What is 1+1?", 2),
    ("What is half of 1?", r"\frac{1}{2}"),
    ("What is 3 times 9?", 27.0),  # parquet/JSON may store integral answers as floats
]
SCHEMAS = {"math500": "problem", "amc23": "question", "minerva": "question"}


@pytest.fixture(autouse=True)
def _hermetic_datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' arrow cache out of the user's home."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def rows_for(name: str, with_ids: bool = False) -> list[dict]:
    rows = [{SCHEMAS[name]: q, "answer": a} for q, a in ITEMS]
    if with_ids:
        for i, row in enumerate(rows):
            row["unique_id"] = f"test/toy/{i}.json"
    return rows


def write(path, rows: list[dict], fmt: str):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # parquet needs one type per column: store answers as text here.
        pq.write_table(pa.Table.from_pylist([{**r, "answer": str(r["answer"])} for r in rows]), path)
    return path


# ---------------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_local_load_with_hub_schema(tmp_path, name, fmt):
    path = write(tmp_path / f"{name}.{fmt}", rows_for(name), fmt)
    problems = get_benchmark(name).load(str(path))
    assert problems == [
        Problem("0", "What is 1+1?", "2"),
        Problem("1", "What is half of 1?", r"\frac{1}{2}"),
        Problem("2", "What is 3 times 9?", "27"),
    ]


def test_load_keeps_file_ids_and_limit(tmp_path):
    path = write(tmp_path / "m.jsonl", rows_for("math500", with_ids=True), "jsonl")
    problems = get_benchmark("math500").load(path, limit=2)
    assert [p.id for p in problems] == ["test/toy/0.json", "test/toy/1.json"]


def test_load_parquet_directory(tmp_path):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "test-00000.parquet", rows_for("amc23"), "parquet")
    problems = get_benchmark("amc23").load(tmp_path / "data")
    assert [p.answer for p in problems] == ["2", r"\frac{1}{2}", "27.0"]


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        get_benchmark("math500").load(str(missing))


def test_missing_field_names_field_and_path(tmp_path):
    path = write(tmp_path / "wrong.jsonl", rows_for("amc23"), "jsonl")  # `question`, not `problem`
    with pytest.raises(ValueError, match=r"wrong\.jsonl.*'problem'"):
        get_benchmark("math500").load(str(path))


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported"):
        get_benchmark("minerva").load(str(path))


def test_default_source_is_the_hub_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(hub_id, split):
        calls.append((hub_id, split))
        return datasets.Dataset.from_list([{"problem": "What is 1+1?", "answer": "2", "unique_id": "u0"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert get_benchmark("math500").load() == [Problem("u0", "What is 1+1?", "2")]
    assert calls == [("HuggingFaceH4/MATH-500", "test")]


# ---------------------------------------------------------------------------- registry


def test_registry_lists_builtins_and_extends(monkeypatch):
    monkeypatch.setattr(B, "BENCHMARKS", dict(B.BENCHMARKS))

    class Toy(Benchmark):
        name = "toy"

        def load(self, path=None, limit=None):
            return [Problem("0", "1+1=", "2")][:limit]

    toy = register(Toy())
    assert get_benchmark("toy") is toy
    register(toy)  # the same object again: no-op
    with pytest.raises(ValueError, match="already registered"):
        register(Toy())
    assert register(Toy(), overwrite=True) is get_benchmark("toy")
    with pytest.raises(KeyError, match="alpacaeval, amc23, math500, minerva, mmlu, mmlu_redux, qa_feedback, reward, toy"):
        get_benchmark("gsm9k")


# ---------------------------------------------------------------------------- prompts


def chat_tokenizer(template: str | None):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    hf.chat_template = template
    return hf


def test_prompt_uses_chat_template():
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    problem = Problem("0", "What is 1+1?", "2")
    prompt = get_benchmark("math500").prompt(problem, chat_tokenizer(template))
    assert prompt == f"<|user|>What is 1+1?\n{COT_INSTRUCTION}\n<|assistant|>"


def test_prompt_without_chat_template():
    problem = Problem("0", "What is 1+1?", "2")
    expected = f"Question: What is 1+1?\n{COT_INSTRUCTION}\nAnswer: "
    assert get_benchmark("amc23").prompt(problem, chat_tokenizer(None)) == expected
    assert get_benchmark("amc23").prompt(problem, None) == expected
    assert COT_INSTRUCTION == r"Please reason step by step, and put your final answer within \boxed{}."


# ---------------------------------------------------------------------------- check


def test_check_end_to_end(tmp_path):
    bench = get_benchmark("minerva")
    problems = bench.load(write(tmp_path / "mv.json", rows_for("minerva"), "json"))
    generations = [
        r"1+1 is two, so \boxed{2}.",
        r"Half of one is \boxed{0.5}.",
        r"3 times 9 is \boxed{28}.",
    ]
    assert bench.check(problems, generations) == [("2", True), ("0.5", True), ("28", False)]
    # several generations per problem: repeat the problem
    assert bench.check([problems[0]] * 2, [r"\boxed{2}", "I think 3"]) == [("2", True), ("3", False)]
    with pytest.raises(ValueError):
        bench.check(problems, generations[:2])
