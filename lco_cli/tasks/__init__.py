"""Synthetic verifiable tasks (the `tiny` default's data and the `arith` benchmark).

`arith` enumerates every pair of `digits`-digit operands, holds out `n_test` of them with a
seeded permutation (never trained on), and checks answers exactly. Prompts are plain text such as
`37*48=`; the target response is the decimal result.

`slip_rate` makes the SFT teacher imperfect the way people are: a seeded fraction of the training
demonstrations is written with the carry slip (each column added without carrying, 57+68=15).
The verifier, the RM's pair labels and every benchmark still use the true answer, so SFT learns a
mixture that a verifier-grounded RM and RL can correct (the setting RLHF is for).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TaskConfig

OPS = {"add": ("+", lambda a, b: a + b), "mul": ("*", lambda a, b: a * b)}
_LEADING_INT = re.compile(r"\s*(-?\d+)")


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    answer: str
    demo: str = ""  # the SFT demonstration: the answer, or its slip (see `slip_rate`)

    def __post_init__(self):
        if not self.demo:
            object.__setattr__(self, "demo", self.answer)


def carry_slip(a: int, b: int) -> int:
    """a + b computed column by column with every carry dropped (57 + 68 -> 15, 19 + 1 -> 10)."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


class ArithTask:
    """a OP b = ? over all `digits`-digit operands; deterministic held-out split from the seed."""

    name = "arith"

    def __init__(self, op: str = "mul", digits: int = 2, n_test: int = 400, seed: int = 0, slip_rate: float = 0.0):
        if slip_rate and op != "add":
            raise ValueError("the carry slip is defined for addition only")
        self.op, self.digits = op, digits
        symbol, fn = OPS[op]
        lo, hi = 10 ** (digits - 1), 10**digits
        pairs = [(a, b) for a in range(lo, hi) for b in range(lo, hi)]
        if n_test >= len(pairs):
            raise ValueError(f"task.n_test={n_test} leaves no training problems ({len(pairs)} in all)")
        random.Random(f"arith-split-{seed}").shuffle(pairs)
        make = lambda a, b: Example(f"{a}{symbol}{b}", f"{a}{symbol}{b}=", str(fn(a, b)))  # noqa: E731
        self.test = [make(a, b) for a, b in pairs[:n_test]]
        self.train = [make(a, b) for a, b in pairs[n_test:]]
        if slip_rate:
            # One seeded draw per problem: a fixed imperfect dataset, like human demonstrations.
            rng = random.Random(f"arith-slip-{seed}")
            self.train = [replace(e, demo=str(carry_slip(a, b))) if rng.random() < slip_rate else e
                          for e, (a, b) in zip(self.train, pairs[n_test:])]

    @staticmethod
    def extract(response: str) -> str | None:
        """The integer the response starts with (generation stops at EOS; trailing text is ignored)."""
        m = _LEADING_INT.match(response)
        return m.group(1) if m else None

    def check(self, example: Example, response: str) -> tuple[str | None, bool]:
        got = self.extract(response)
        return got, got is not None and got == example.answer and response.strip() == example.answer


def get_task(cfg: "TaskConfig", seed: int) -> ArithTask:
    if cfg.name == "arith":
        return ArithTask(cfg.op, cfg.digits, cfg.n_test, seed, cfg.slip_rate)
    raise ValueError(f"unknown task {cfg.name}")  # config validation forbids this


def greedy_accuracy(model, tokenizer, task: ArithTask, n_problems: int, batch_size: int = 256,
                    max_new_tokens: int = 16) -> dict:
    """Held-out greedy accuracy on the first `n_problems` test problems (fixed, so comparable)."""
    from lco_cli.engines.generation import HFEngine, encode_prompts

    problems = task.test[:n_problems]
    if not problems:
        return {"heldout_acc": None, "n_problems": 0}
    engine = HFEngine(model, tokenizer, batch_size)
    roll = engine.generate(encode_prompts(tokenizer, [p.prompt for p in problems]), 1, temperature=0.0,
                           max_new_tokens=max_new_tokens)
    correct = sum(task.check(p, text)[1] for p, text in zip(problems, roll.texts))
    return {"heldout_acc": correct / len(problems), "n_problems": len(problems)}
