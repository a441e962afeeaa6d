"""The synthetic `arith` task (the `tiny` default's data and the `arith` benchmark).

`arith` enumerates every pair of `digits`-digit operands, holds out `n_test` of them with a
seeded permutation (never trained on), and checks answers exactly. Prompts are plain text such as
`37*48=` (no chat template: the tiny model has none); the target response is the decimal result.

`slip_rate` makes the SFT teacher imperfect the way people are: a seeded fraction of the training
demonstrations is written with the carry slip (each column added without carrying, 57+68=15).
The verifier, the RM's pair labels and every benchmark still use the true answer, so SFT learns a
mixture that a verifier-grounded RM and RL can correct (the setting RLHF is for).
"""
from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from lco_cli.tasks.base import DATA_KEYS, Example, Task, Verdict, register_task, unused_keys

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TaskConfig

OPS = {"add": ("+", lambda a, b: a + b), "mul": ("*", lambda a, b: a * b)}
LEADING_INT = re.compile(r"\s*(-?\d+)")


def carry_slip(a: int, b: int) -> int:
    """a + b computed column by column with every carry dropped (57 + 68 -> 15, 19 + 1 -> 10)."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


@register_task("arith")
class ArithTask(Task):
    """a OP b = ? over all `digits`-digit operands; deterministic held-out split from `seed`."""

    has_verifier = True
    max_new_tokens = 16  # 2·digits result digits + EOS fit with room to spare for digits <= 6

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

        def make(a: int, b: int) -> Example:
            answer = str(fn(a, b))
            return Example(f"{a}{symbol}{b}", f"{a}{symbol}{b}=", answer, answer)

        self.test = [make(a, b) for a, b in pairs[:n_test]]
        self.train = [make(a, b) for a, b in pairs[n_test:]]
        if slip_rate:
            # One seeded draw per problem: a fixed imperfect dataset, like human demonstrations.
            rng = random.Random(f"arith-slip-{seed}")
            self.train = [replace(e, demo=str(carry_slip(a, b))) if rng.random() < slip_rate else e
                          for e, (a, b) in zip(self.train, pairs[n_test:])]

    @classmethod
    def from_config(cls, cfg: "TaskConfig", seed: int) -> "ArithTask":
        # The split and the slips follow task.split_seed, not the run's seed: every seed of a
        # multi-seed run trains and evaluates on the same problems (as bench/compare_algos pins).
        return cls(cfg.op, cfg.digits, cfg.n_test, cfg.split_seed, cfg.slip_rate)

    @classmethod
    def config_errors(cls, cfg: "TaskConfig") -> list[str]:
        return unused_keys(cfg, DATA_KEYS, cls.name)  # (slip_rate without op 'add': the loader's own check)

    @staticmethod
    def extract(response: str) -> str | None:
        """The integer the response starts with (generation stops at EOS; trailing text is ignored)."""
        m = LEADING_INT.match(response)
        return m.group(1) if m else None

    def check(self, example: Example, response: str) -> Verdict:
        got = self.extract(response)
        return got, got is not None and got == example.answer and response.strip() == example.answer
