"""User reward functions: `train.reward: my_pkg.rewards:score` (as TRL's `reward_funcs`).

The named function is imported only when a preset names it and is called once per rollout as
`score(prompt, completion, row) -> float`, where `prompt` is the exact text fed to the model
(chat template included), `completion` the decoded response, and `row` the task example's source
row (empty for `arith`). See docs/tasks.md for an example.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

from lco_cli.errors import ConfigError
from lco_cli.tasks.base import PYTHON_REF, import_ref

RewardFn = Callable[[str, str, dict], float]


def is_reward_ref(value: str) -> bool:
    """Whether `train.reward` names a Python function ('module:func') rather than 'rm'/'verifier'."""
    return bool(PYTHON_REF.match(value))


def load_reward_fn(ref: str, key: str = "train.reward") -> RewardFn:
    """The function `ref` ('package.module:func') names, wrapped to return a finite float.

    ConfigError (naming `key`) if it cannot be imported, is not callable, or cannot take the three
    positional arguments; a call that returns a non-number or a non-finite value raises ConfigError
    naming the function (a reward the optimiser cannot use)."""
    fn = import_ref(ref, key)
    if not callable(fn):
        raise ConfigError(f"{key}: '{ref}' is not callable")
    try:
        inspect.signature(fn).bind("prompt", "completion", {})
    except TypeError as exc:
        raise ConfigError(f"{key}: '{ref}' must accept (prompt, completion, row): {exc}") from None
    except ValueError:  # builtins without a signature: trust them
        pass

    def reward(prompt: str, completion: str, row: dict) -> float:
        value = fn(prompt, completion, row)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: '{ref}' returned {value!r}; a reward function must return a finite float")
        return float(value)

    reward.__name__ = getattr(fn, "__name__", "reward")
    reward.__doc__ = getattr(fn, "__doc__", None)
    return reward
