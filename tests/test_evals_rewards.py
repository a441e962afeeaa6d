"""Reward-model benchmarks through `lco eval`: `reward` (sequence classifiers, `eval.reward_models`)
and `qa_feedback` (Wu et al.'s fine-grained protocol), with small classifiers built here whose
heads are set so that their outputs are known in advance."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import invoke, read_jsonl

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789+=?.,:;! ")


def word_tokenizer(words: list[str]):
    """A whitespace word-level fast tokenizer with `</s>` (the QA-Feedback separator) and padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "</s>", *dict.fromkeys(words)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def build_token_classifier(path, bias: list[float], seed: int = 0):
    """A tiny Qwen2 token classifier whose head has zero weights: every position outputs `bias`."""
    from transformers import Qwen2Config, Qwen2ForTokenClassification

    tok = word_tokenizer(CHARS + "question answer context what is the sum".split())
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=len(bias), pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForTokenClassification(cfg)
    with torch.no_grad():
        model.score.weight.zero_()
        model.score.bias.copy_(torch.tensor(bias))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_random_rm(path, seed: int):
    """A sequence reward model with a random head (scores vary with the text)."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tok = word_tokenizer(CHARS)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    Qwen2ForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_models_benchmark_scores_each_response(fast_preset, workdir, runner):
    (workdir / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"{a}+{b}="}) + "\n" for a, b in
                                                   [(12, 30), (45, 17), (60, 21), (33, 33), (9, 90)]))
    build_random_rm(workdir / "rm_a", 1)
    build_random_rm(workdir / "rm_b", 2)
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.policies=[base]", "eval.benchmarks=[reward]",
                 "eval.data.reward=prompts.jsonl", "eval.reward_models={a: rm_a, b: rm_b}", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["metric"]: r for r in json.loads(res.output[res.output.index("{"):])["results"]}
    assert set(rows) == {"reward/a", "reward/b", "reward/avg"}
    samples = read_jsonl(workdir / "run/eval/samples/base/reward.jsonl")
    assert len(samples) == 5 and len({s["rewards"]["a"] for s in samples}) > 1  # a real, text-dependent score
    # Score one response again outside lco: the RM on "prompt\n\nresponse" (no chat template).
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok, rm = AutoTokenizer.from_pretrained(workdir / "rm_a"), AutoModelForSequenceClassification.from_pretrained(workdir / "rm_a")
    s = samples[0]
    with torch.no_grad():
        direct = rm(**tok(f"{s['prompt']}\n\n{s['generation']}", return_tensors="pt")).logits[0, 0].item()
    assert s["rewards"]["a"] == pytest.approx(direct, abs=1e-5)  # padding in a batch vs alone: float32 noise only
    for name in ("a", "b"):  # 1e-9: float summation order only
        assert rows[f"reward/{name}"]["mean"] == pytest.approx(sum(x["rewards"][name] for x in samples) / 5, abs=1e-9)
    assert rows["reward/avg"]["mean"] == pytest.approx((rows["reward/a"]["mean"] + rows["reward/b"]["mean"]) / 2, abs=1e-9)


def test_reward_benchmark_config_errors(fast_preset, runner):
    res = invoke(runner, "validate", "fast.yaml", "eval.benchmarks=[reward]")
    assert res.exit_code == 2 and "eval.reward_models" in res.output and "eval.data.reward" in res.output


def test_sub_sentence_split_follows_wu_et_al():
    from lco_cli.evals.qa_feedback import sentence_spans, sub_sentences

    text = "Paris is the capital of France, and it lies on the Seine river. It is big! Yes"
    assert sentence_spans(text) == ["Paris is the capital of France, and it lies on the Seine river.", "It is big!", "Yes"]
    # cut after "France," (6 words before, 7 after: both keep >= 5 words); "It is big!" stays whole
    assert sub_sentences(text) == ["Paris is the capital of France,", "and it lies on the Seine river.", "It is big!", "Yes"]
    # a leading piece shorter than 5 words is not cut off
    assert sub_sentences("Yes, it is true that the sum is twelve here.") == ["Yes, it is true that the sum is twelve here."]


def test_qa_feedback_fine_grained_rewards(fast_preset, workdir, runner):
    rows = [{"id": f"q{i}", "question": f"what is the sum {i}?", "prompt": f"question: what is the sum {i}? context: {i}+{i}="}
            for i in range(4)]
    (workdir / "qa_test.json").write_text(json.dumps(rows))
    build_token_classifier(workdir / "rel", [0.0, 0.0, 1.0])    # class 2 beats 1: every sub-sentence relevant
    build_token_classifier(workdir / "fact", [1.0, 0.0, 0.0])   # class 0 beats 2: every sentence non-factual
    build_random_rm(workdir / "comp", 3)                           # completeness: a text-dependent scalar
    res = invoke(runner, "eval", "fast.yaml", "--run-dir", "run", "eval.policies=[base]", "eval.benchmarks=[qa_feedback]",
                 "eval.data.qa_feedback=qa_test.json", "eval.qa_feedback.relevance_model=rel",
                 "eval.qa_feedback.factuality_model=fact", "eval.qa_feedback.completeness_model=comp", "--json")
    assert res.exit_code == 0, res.output
    out = {r["metric"]: r for r in json.loads(res.output[res.output.index("{"):])["results"]}
    samples = read_jsonl(workdir / "run/eval/samples/base/qa_feedback.jsonl")
    from lco_cli.evals.qa_feedback import sentence_spans, sub_sentences

    for s in samples:
        assert s["n_sub_sentences"] == len(sub_sentences(s["generation"])) == s["n_relevant"]
        assert s["n_sentences"] == len(sentence_spans(s["generation"])) and s["n_factual"] == 0
    n_pieces = sum(s["n_sub_sentences"] for s in samples)
    assert out["reward/relevance"]["mean"] == (1.0 if n_pieces else 0.0)
    assert out["reward/factuality"]["mean"] == 0.0
    # completeness: their input `{prompt, whitespace-normalised} answer: {response}`, scored alone here
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok, rm = AutoTokenizer.from_pretrained(workdir / "comp"), AutoModelForSequenceClassification.from_pretrained(workdir / "comp")
    with torch.no_grad():
        direct = [rm(**tok(f"{r['prompt']} answer: {s['generation']}", return_tensors="pt")).logits[0, 0].item()
                  for r, s in zip(rows, samples)]
    assert [s["completeness"] for s in samples] == pytest.approx(direct, abs=1e-5)  # batch padding: float32 noise only
    assert out["reward/completeness"]["mean"] == pytest.approx(sum(direct) / len(direct), abs=1e-5)


def test_qa_feedback_weighting_by_pieces():
    from lco_cli.evals.qa_feedback import QAFeedbackBenchmark

    samples = [{"n_relevant": 1, "n_sub_sentences": 1, "n_factual": 0, "n_sentences": 1, "completeness": 0.0},
               {"n_relevant": 1, "n_sub_sentences": 3, "n_factual": 3, "n_sentences": 3, "completeness": 1.0}]
    rows = {r["metric"]: r["mean"] for r in QAFeedbackBenchmark().rows("p", samples)}
    # Σ correct / Σ pieces (their aggregate_metrics), not the mean of the ratios (2/3 and 1/2 here)
    assert rows["reward/relevance"] == pytest.approx(2 / 4) and rows["reward/factuality"] == pytest.approx(3 / 4)
    assert rows["reward/completeness"] == pytest.approx(0.5)
