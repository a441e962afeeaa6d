"""tiny-math (the CPU stand-in of the real path) and shared-tokenizer checks across padded vocabularies."""
from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from lco_cli.config import TaskConfig
from lco_cli.errors import ConfigError
from lco_cli.evals.verify import check_answer, extract_boxed
from lco_cli.tasks import get_task, tiny_math
from lco_cli.tasks.vocab import check_embedding_covers, mask_padding_logits, shared_vocab_size, trim_logits, usable_vocab

SPEC = "tiny-math:hidden=32,layers=1,heads=2,kv_heads=1,intermediate=64"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return tiny_math.build_tiny_math(SPEC, seed=0, out_dir=tmp_path_factory.mktemp("tm") / "base")


def test_generated_rows_are_math_schema_with_latex_answers_that_verify():
    rows = tiny_math.generate_rows()
    assert len(rows) == tiny_math.N_ROWS == len({r["problem"] for r in rows})
    assert rows == tiny_math.generate_rows()  # deterministic
    assert {"problem", "solution", "level", "type", "unique_id"} <= set(rows[0])
    answers = [extract_boxed(r["solution"]) for r in rows]
    assert all(answers) and any(a.startswith("\\frac{") for a in answers) and any(a.startswith("-") for a in answers)
    # The boxed answer is the true value (recomputed here from the fraction-sum problems' operands).
    for row in rows[:60]:
        if row["type"] == "Prealgebra":
            nums = [int(t) for t in row["problem"].replace("{", " ").replace("}", " ").split() if t.isdigit()]
            truth = Fraction(nums[0], nums[1]) + Fraction(nums[2], nums[3])
            assert check_answer(f"{truth.numerator}/{truth.denominator}", row["solution"])[1], row


def test_tiny_math_task_source(caplog):
    task = get_task(TaskConfig(name="math", source="tiny-math", n_test=200), 0)
    assert len(task.test) == 200 and len(task.train) == tiny_math.N_ROWS - 200
    assert not caplog.records  # every generated row has an answer
    assert task.default_max_new_tokens(TaskConfig(name="math", source="tiny-math")) == tiny_math.MAX_NEW_TOKENS


def test_builder_writes_a_loadable_hf_folder_with_bpe_and_chat_template(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    text = "Solve for $x$: $3x + 1 = 7$. Ünïcode ∑ 😀"
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text.encode())  # byte-level BPE: lossless, merged
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and model.config.eos_token_id == tok.eos_token_id
    assert tok.convert_ids_to_tokens(tok(rendered)["input_ids"])[0] == "<|im_start|>"  # one special token
    # Embedding rows padded past the tokenizer as in Qwen checkpoints (450 tokens -> 512 rows).
    assert model.config.vocab_size == 512 and usable_vocab(tok) == 450
    rows = [json.loads(line) for line in (built / "tiny_math_train.jsonl").read_text().splitlines()]
    assert rows == tiny_math.generate_rows()
    out = model.generate(**tok(rendered, return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= len(tok(rendered)["input_ids"]) + 3


def test_builder_is_deterministic_and_idempotent(built, tmp_path):
    marker = (built / "lco_tiny_math.json").read_text()
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert tiny_math.build_tiny_math(SPEC, 0, built) == built and (built / "model.safetensors").stat().st_mtime_ns == stamp
    again = tiny_math.build_tiny_math(SPEC, 0, tmp_path / "again")
    assert (again / "lco_tiny_math.json").read_text() == marker
    assert (again / "tokenizer.json").read_text() == (built / "tokenizer.json").read_text()
    assert (again / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()


@pytest.mark.parametrize("spec,message", [("tiny-math:hidden=x", "bad tiny-math spec 'hidden=x'"),
                                          ("tiny-math:hidden=30,heads=4", "hidden % heads == 0")])
def test_bad_tiny_math_spec(spec, message):
    with pytest.raises(ConfigError, match=message):
        tiny_math.parse_spec(spec)
    assert tiny_math.parse_spec("tiny") is None and tiny_math.parse_spec("Qwen/Qwen2.5-3B") is None


def test_model_policy_tiny_math_resolves_through_the_cli(runner, workdir):
    """`model.policy: tiny-math` is built into RUN_DIR/base like `tiny` (the resolve_model_ref hook)."""
    from lco_cli.config import load
    from lco_cli.runtime.models import resolve_model_ref
    from lco_cli.runtime.rundir import RunDir

    _, preset = load("tiny-math", [f"model.policy={SPEC}"])
    path = resolve_model_ref("base", RunDir(workdir / "run"), preset)
    assert path == str(workdir / "run" / "base") and (workdir / "run" / "base" / "lco_tiny_math.json").exists()
    assert resolve_model_ref(SPEC, RunDir(workdir / "run"), preset) == path


# --------------------------------------------------------------------------- shared tokenizer, padded vocabularies


def padded_model(tok, rows: int, seed: int):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=rows, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def tokenizers():
    rows = tiny_math.generate_rows(300)
    return (tiny_math.train_tokenizer(tiny_math.corpus(rows), 300), tiny_math.train_tokenizer(tiny_math.corpus(rows), 300),
            tiny_math.train_tokenizer(tiny_math.corpus(rows), 310))


def test_same_tokenizer_different_padding_compares_over_the_tokenizer(tokenizers):
    """Policy (300 + 4 padding rows) and RM (300 + 84, like Qwen2.5-3B vs -7B) share one tokenizer."""
    tok_a, tok_b, _ = tokenizers
    small, large = padded_model(tok_a, 304, 0), padded_model(tok_b, 384, 1)
    v = shared_vocab_size(tok_a, tok_b, "policy", "rm")
    assert v == usable_vocab(tok_a) == 300
    check_embedding_covers(small, tok_a, "policy")
    ids = torch.tensor([tok_a("Compute $3 \\times 4$.")["input_ids"]])
    with torch.no_grad():
        za, zb = small(ids).logits, large(ids).logits
    assert (za.shape[-1], zb.shape[-1]) == (304, 384)
    ta, tb = trim_logits(za, v), trim_logits(zb, v)
    assert ta.shape == tb.shape and torch.equal(ta, za[..., :300])
    # A token-level comparison (KL) is now defined and finite; on the untrimmed logits it is not even shaped.
    kl = torch.nn.functional.kl_div(tb.log_softmax(-1), ta.log_softmax(-1), log_target=True, reduction="sum")
    assert torch.isfinite(kl) and kl > 0
    probs = mask_padding_logits(zb, v).softmax(-1)
    assert torch.all(probs[..., 300:] == 0) and torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert torch.allclose(probs[..., :300], tb.softmax(-1))


def test_different_tokenizers_are_rejected_naming_both_models(tokenizers):
    tok_a, _, other = tokenizers
    with pytest.raises(ConfigError) as info:
        shared_vocab_size(tok_a, other, "Qwen/Qwen2.5-3B", "meta-llama/Llama-3.1-8B")
    assert "'Qwen/Qwen2.5-3B' (300 tokens) and 'meta-llama/Llama-3.1-8B' (310 tokens)" in info.value.message
    # Same size, one added token: different contents, so still incompatible (vocab_size alone would pass).
    tok_a2 = tiny_math.train_tokenizer(tiny_math.corpus(tiny_math.generate_rows(300)), 300)
    tok_a2.add_tokens(["<extra>"])
    tok_a3 = tiny_math.train_tokenizer(tiny_math.corpus(tiny_math.generate_rows(300)), 300)
    tok_a3.add_tokens(["<other>"])
    with pytest.raises(ConfigError, match="tokens only in 'a': \\['<extra>'\\]"):
        shared_vocab_size(tok_a2, tok_a3, "a", "b")


def test_a_model_smaller_than_its_tokenizer_is_rejected(tokenizers):
    with pytest.raises(ConfigError, match="model 'm' has 200 output rows for a tokenizer of 300 tokens"):
        check_embedding_covers(padded_model(tokenizers[0], 200, 0), tokenizers[0], "m")
