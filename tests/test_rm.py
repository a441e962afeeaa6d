"""`lco rm`: the DPO loss, pair construction (self / file, both layouts), and the stage through the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke, read_jsonl
from lco_cli.losses.dpo import dpo_loss
from lco_cli.data.pairs import pairs_from_rows, pairs_from_samples
from conftest import write_pairs


def test_dpo_loss_hand_derived():
    # chosen: policy −2, ref −3 → +1; rejected: policy −4, ref −3.5 → −0.5; β=0.1 → margin 0.15
    loss, r_c, r_r = dpo_loss(torch.tensor([-2.0]), torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-3.5]), 0.1)
    assert float(r_c) == pytest.approx(0.1) and float(r_r) == pytest.approx(-0.05)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-0.15))), rel=1e-6)
    # at initialisation (policy == reference) the loss is log 2 and its gradient pushes chosen up, rejected down
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-1.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-1.0]), torch.tensor([-1.0]), 0.5)
    loss.sum().backward()
    assert float(loss.detach()) == pytest.approx(math.log(2))
    assert float(pc.grad) == pytest.approx(-0.25) and float(pr.grad) == pytest.approx(0.25)  # ∓β·σ(0)


# DPO parity with TRL's DPOTrainer loss code: tests/test_trl_parity.py.


def test_self_pairs_are_correct_vs_incorrect_and_split_by_prompt():
    prompts = [f"{i}+{i}=" for i in range(200)]
    responses = [[str(2 * i), str(2 * i), str(2 * i + 1), str(2 * i + 2)] for i in range(200)]
    verdicts = [[r == str(2 * i) for r in rs] for i, rs in enumerate(responses)]
    pairs = pairs_from_samples(prompts, responses, verdicts, max_per_prompt=4, max_pairs=10_000, eval_fraction=0.2, seed=0)
    assert len(pairs) == 200 * 2  # one distinct correct × two distinct incorrect per prompt (duplicates removed)
    for p in pairs:
        i = int(p.prompt.split("+")[0])
        assert p.chosen == str(2 * i) and p.rejected != str(2 * i)
    train = {p.prompt for p in pairs if p.split == "train"}
    held = {p.prompt for p in pairs if p.split == "eval"}
    assert not train & held and 20 < len(held) < 60
    capped = pairs_from_samples(prompts, responses, verdicts, max_per_prompt=1, max_pairs=50, eval_fraction=0.2, seed=0)
    assert len(capped) == 50
    # all-correct or all-wrong prompts give no pair
    assert pairs_from_samples(["p"], [["1", "1"]], [[True, True]], max_per_prompt=4, max_pairs=9, eval_fraction=0, seed=0) == []


class _Tok:
    chat_template = None


def test_file_pairs_plain_and_chat_layouts():
    plain = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}]
    p = pairs_from_rows(plain, _Tok(), eval_fraction=0.0, seed=0, max_pairs=10)[0]
    assert (p.prompt, p.chosen, p.rejected, p.split) == ("1+1=", "2", "3", "train")
    chat = [{"prompt": "hi", "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}]
    p = pairs_from_rows(chat, _Tok(), eval_fraction=0.0, seed=0, max_pairs=10)[0]
    assert p.chosen == "hello" and p.rejected == "go away" and p.prompt == "user: hi\nassistant: "
    from lco_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="no field 'rejected'"):
        pairs_from_rows([{"prompt": "x", "chosen": "y"}], _Tok(), eval_fraction=0.0, seed=0, max_pairs=1)


def _rm_files_ok(run):
    rm = run / "rm"
    assert {"status.json", "config.yaml", "metrics.jsonl", "final", "eval.json", "pairs.jsonl"} <= {p.name for p in rm.iterdir()}
    ev = json.loads((rm / "eval.json").read_text())
    assert {"pair_accuracy", "reward_margin", "n_pairs"} <= set(ev) and ev["n_pairs"] > 0
    meta = json.loads((rm / "final/lco_rm.json").read_text())
    assert meta["beta"] == 0.1 and (run / "sft/final").resolve() == (rm / "final" / meta["reference_relative"]).resolve()
    rows = read_jsonl(rm / "metrics.jsonl")
    assert {"loss", "reward_margin", "accuracy", "lr", "grad_norm"} <= set(rows[0])
    before, after = load_file(str(run / "sft/final/model.safetensors")), load_file(str(rm / "final/model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in after)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(rm / "final")


def test_rm_from_file_through_cli(runner, fast_preset, workdir):
    write_pairs(workdir / "pairs.jsonl")
    assert invoke(runner, "sft", fast_preset, "--run-dir", "r").exit_code == 0
    res = invoke(runner, "rm", fast_preset, "--run-dir", "r", "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl")
    assert res.exit_code == 0, res.output
    _rm_files_ok(workdir / "r")
    rows = read_jsonl(workdir / "r/rm/pairs.jsonl")
    assert len(rows) == 40 and {r["split"] for r in rows} == {"train", "eval"}


def test_rm_self_pairs_through_cli(runner, fast_preset, workdir, monkeypatch):
    """`self` pairs: sampled, verified, paired. The 6-step SFT model is never right, so the verifier is
    replaced by a lenient one (first digit right) to exercise the plumbing end to end."""
    from lco_cli.tasks import ArithTask

    monkeypatch.setattr(ArithTask, "check", lambda self, ex, resp: (resp[:1], resp[:1] == ex.answer[:1]))
    assert invoke(runner, "sft", fast_preset, "--run-dir", "r").exit_code == 0
    res = invoke(runner, "rm", fast_preset, "--run-dir", "r", "rm.pairs.samples_per_prompt=8", "rm.pairs.n_prompts=48")
    assert res.exit_code == 0, res.output
    _rm_files_ok(workdir / "r")
    rows = read_jsonl(workdir / "r/rm/pairs.jsonl")
    assert rows and all(r["chosen"][:1] != r["rejected"][:1] for r in rows)  # labelled by the (lenient) verifier


def test_rm_missing_sft_exit_3(runner, fast_preset, workdir):
    res = invoke(runner, "rm", fast_preset, "--run-dir", "r")
    assert res.exit_code == 3 and "r/sft/final" in res.output and "Traceback" not in res.output
    res = invoke(runner, "validate", fast_preset, "rm.pairs.source=file")
    assert res.exit_code == 2 and "rm.pairs.path" in res.output
