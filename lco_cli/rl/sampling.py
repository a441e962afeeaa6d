"""Rollouts for the train loop: generate on-policy responses, score them, pack them into a `RolloutBatch`.

`Sampler` is what `Update.collect` uses (DAPO refills, GKD mixes in SFT demonstrations, MiniLLM samples
teacher-mixed); `Scored` holds one sampling round's scored rollouts before packing.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from lco_cli.engines.generation import Rollouts, encode_prompts
from lco_cli.rl.rollout import RolloutBatch, from_rollouts


def score(batch: RolloutBatch, cfg, reward) -> None:
    """Sequence rewards: verifier ±1 (paper Table 5) or the DPO implicit reward Σ_t log-ratio."""
    if cfg.reward == "verifier":
        batch.rewards = batch.correct * 2 - 1
    else:
        batch.rewards = reward.sequence_rewards(batch.input_ids, batch.attention_mask, batch.targets).float().cpu()


@dataclass(frozen=True)
class RolloutRecord:
    """One row of `train/rollouts.jsonl`: what the policy saw (template included) and said, and its reward."""

    prompt: str
    completion: str
    reward: float
    response_len: int
    truncated: bool
    extracted: str | None = None   # the verifier's reading of the completion (tasks with a verifier)
    correct: bool | None = None

    def row(self, step: int) -> dict:
        out = {"step": step, **asdict(self)}
        if self.correct is None:  # no verifier: no verdict to show
            del out["extracted"], out["correct"]
        return out


@dataclass
class Scored:
    """Scored rollouts of one sampling round, before packing: `examples[g]` is group g's problem."""

    examples: list
    roll: Rollouts
    correct: list[bool]
    rewards: torch.Tensor  # [n] on the CPU

    def __len__(self) -> int:
        return len(self.roll)

    def groups(self) -> list[list[int]]:
        """Row indices of each group, in group order."""
        out: list[list[int]] = [[] for _ in self.examples]
        for i, g in enumerate(self.roll.group):
            out[g].append(i)
        return out

    def select_groups(self, keep: list[int]) -> Scored:
        """The groups `keep` (in that order), renumbered 0..len(keep)-1."""
        rows_of = self.groups()
        rows = [i for g in keep for i in rows_of[g]]
        new_g = {g: k for k, g in enumerate(keep)}
        r = self.roll
        roll = Rollouts([r.prompt_ids[i] for i in rows], [r.response_ids[i] for i in rows], [r.texts[i] for i in rows],
                        [r.truncated[i] for i in rows], [new_g[r.group[i]] for i in rows])
        return Scored([self.examples[g] for g in keep], roll, [self.correct[i] for i in rows], self.rewards[rows])

    @staticmethod
    def concat(parts: list[Scored]) -> Scored:
        roll, examples, correct, offset = Rollouts([], [], [], [], []), [], [], 0
        for p in parts:
            roll.prompt_ids += p.roll.prompt_ids
            roll.response_ids += p.roll.response_ids
            roll.texts += p.roll.texts
            roll.truncated += p.roll.truncated
            roll.group += [g + offset for g in p.roll.group]
            examples += p.examples
            correct += p.correct
            offset += len(p.examples)
        return Scored(examples, roll, correct, torch.cat([p.rewards for p in parts]) if parts else torch.zeros(0))


class Sampler:
    """What `Update.collect` uses to get scored rollout batches (one per process).

    Prompts are rendered by the task (its chat template when the tokenizer has one); the verdict comes
    from the task's verifier when it has one; the reward is `train.reward` (verifier ±1, the DPO RM, or a
    user function `module:func` of (prompt, completion, row)). `records` keeps this step's rollouts for
    `train/rollouts.jsonl`."""

    def __init__(self, cfg, engine, policy, tok, task, reward, acc, seed: int, reward_fn=None):
        self.cfg, self.engine, self.policy, self.tok, self.task = cfg, engine, policy, tok, task
        self.reward, self.acc, self.seed, self.reward_fn = reward, acc, seed, reward_fn
        self.samples = 0  # responses sampled on this process in the current step
        self.records: list[RolloutRecord] = []

    def start_step(self) -> None:
        self.samples, self.records = 0, []

    def render(self, examples: list) -> list[str]:
        return [self.task.render(e, self.tok) for e in examples]

    def generate(self, examples: list, n: int, **gen_kwargs) -> Scored:
        """`n` on-policy responses per problem (extra kwargs go to `engine.generate`), scored."""
        cfg = self.cfg
        self.engine.sync_weights(self.acc.unwrap_model(self.policy).lm)
        prompts = self.render(examples)
        roll = self.engine.generate(encode_prompts(self.tok, prompts), n,
                                    temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                    max_new_tokens=cfg.rollout.max_new_tokens, **gen_kwargs)
        self.samples += len(roll)
        return self._score(examples, prompts, roll)

    def dataset(self, examples: list) -> Scored:
        """The SFT demonstrations of these problems as responses (demo + EOS), one per problem: GKD's
        "dataset" batches are the supervised data the student was warmed up on, not oracle answers."""
        tok = self.tok
        prompts = self.render(examples)
        responses = [tok(e.demo, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for e in examples]
        roll = Rollouts(encode_prompts(tok, prompts), responses, [e.demo for e in examples], [False] * len(examples),
                        list(range(len(examples))))
        return self._score(examples, prompts, roll)

    def _score(self, examples: list, prompts: list[str], roll: Rollouts) -> Scored:
        has_verifier = self.task.has_verifier
        checks = self.task.check_batch([examples[g] for g in roll.group], roll.texts) if has_verifier else None
        correct = [bool(ok) for _, ok in checks] if has_verifier else [False] * len(roll)
        batch = from_rollouts(roll, self.tok.pad_token_id, correct).to(self.acc.device)
        if self.reward_fn is not None:
            batch.rewards = torch.tensor([self.reward_fn(prompts[g], text, examples[g].row,
                                                         where=f" on example {examples[g].id!r} (prompt {g} of the batch)")
                                          for g, text in zip(roll.group, roll.texts)])
        else:
            score(batch, self.cfg, self.reward)
        rewards = batch.rewards.float().cpu()
        for i, (g, text) in enumerate(zip(roll.group, roll.texts)):
            verdict = {"extracted": checks[i][0], "correct": correct[i]} if has_verifier else {}
            self.records.append(RolloutRecord(prompts[g], text, float(rewards[i]), len(roll.response_ids[i]),
                                              bool(roll.truncated[i]), **verdict))
        return Scored(list(examples), roll, correct, rewards)

    def pack(self, scored: Scored) -> RolloutBatch:
        batch = from_rollouts(scored.roll, self.tok.pad_token_id, scored.correct).to(self.acc.device)
        batch.rewards = scored.rewards.to(self.acc.device)
        return batch

    def sample(self, examples: list, n: int, **gen_kwargs) -> RolloutBatch:
        """Generate, score and pack in one go (the default `collect`)."""
        return self.pack(self.generate(examples, n, **gen_kwargs))

    def extra_examples(self, step: int, round_: int, k: int) -> list:
        """`k` more training problems for this process (DAPO refill), seeded by (seed, step, round, rank)."""
        rng = random.Random(f"refill-{self.seed}-{step}-{round_}-{self.acc.process_index}")
        return [self.task.train[i] for i in rng.sample(range(len(self.task.train)), k)]
