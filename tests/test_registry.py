"""A new `train.algo` is one class registered from outside `lco_cli/`: this file defines a toy
algorithm (REINFORCE without a baseline, written against the public `Update` protocol), registers
it, and trains it for one step through the real CLI."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke, read_jsonl
from lco_cli.engines.chunked import chunked_selective_logprobs
from lco_cli.rl.registry import algorithms, get_algo, register_algo, unregister_algo
from lco_cli.rl.update import MicroBatch, Normaliser, Prepared, Update, per_row, policy_head


@dataclass(frozen=True)
class ToyPrepared(Prepared):
    seq_reward: torch.Tensor = per_row()  # one value per sequence, sliced by rows


class ToyReinforce(Update):
    """−Σ_i r_i Σ_t log π(a_t) / (number of sequences): plain REINFORCE, no baseline."""

    keeps_old_head = False

    def prepare(self, batch):
        common, _, stats = self.behaviour(batch)
        adv = batch.rewards.float()[batch.token_seq.to(batch.rewards.device)]
        return ToyPrepared(old_logprobs=common.old_logprobs, ref_logprobs=common.ref_logprobs, entropy=common.entropy,
                           adv_sampled=adv, seq_reward=batch.rewards.float()), stats

    def micro_loss(self, batch, view: MicroBatch, prep: ToyPrepared, norm: Normaliser, part="all", stats=False):
        mb = batch.subset(view.rows)
        logprobs = chunked_selective_logprobs(policy_head(self.env, mb), mb.sampled_ids, self.env.chunk_size)
        per_seq = torch.zeros(len(view.rows), dtype=logprobs.dtype).index_add_(0, mb.token_seq, logprobs)
        loss = -(prep.seq_reward.to(per_seq.dtype) * per_seq).sum() / norm.global_seqs * norm.world
        return loss, {}


@pytest.fixture
def toy():
    register_algo("toy")(ToyReinforce)
    yield ToyReinforce
    unregister_algo("toy")


def test_registered_class_knows_its_name_and_is_listed(toy):
    assert get_algo("toy") is toy and toy.name == "toy"
    builtin = {"lco", "reinforce", "ppo", "grpo", "dapo", "gspo", "gkd", "minillm"}
    assert set(algorithms()) == builtin | {"toy"}


def test_a_toy_algorithm_from_a_test_file_trains_one_step(runner, run_dir, toy):
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", "rm.pairs.source=file", "rm.pairs.path=pairs.jsonl",
                 "train.algo=toy", "train.reward=rm", "train.steps=1", "train.eval_every=0")
    assert res.exit_code == 0, res.output
    row = read_jsonl(run_dir / "train/metrics.jsonl")[-1]
    assert row["step"] == 1 and torch.isfinite(torch.tensor(row["loss"])) and row["grad_norm"] > 0
    before, after = load_file(str(run_dir / "sft/final/model.safetensors")), load_file(str(run_dir / "train/final/model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in after), "parameters did not change"


def test_unknown_algo_lists_the_registry(runner, fast_preset):
    res = invoke(runner, "validate", str(fast_preset), "train.algo=sac")
    assert res.exit_code == 2 and "train.algo: 'sac' is not one of lco, reinforce" in res.output


def test_builtin_specs_are_torch_free_and_their_updates_subclass_them():
    """`lco validate` reads the specs (rl.specs) without torch; training runs their Updates. The Update must
    be the spec's subclass with the same `algo_args` dataclass, so what validate checks is what trains."""
    import subprocess
    import sys

    probe = "import sys; from lco_cli.rl.registry import algorithms; algorithms(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
    from lco_cli.rl.registry import update_class

    for name, spec in algorithms().items():
        update = update_class(name)
        assert issubclass(update, spec) and issubclass(update, Update) and update.name == name
        loss_cls = getattr(update, "loss_cls", None)
        assert spec.algo_args_class() is (loss_cls.Config if loss_cls is not None else None), name
    assert update_class("lco").dense_advantages and not update_class("grpo").dense_advantages
