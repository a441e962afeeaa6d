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

from lco_cli.errors import ConfigError, StageFailedError
from lco_cli.tasks.base import PYTHON_REF, import_ref

RewardFn = Callable[[str, str, dict], float]


def is_reward_ref(value: str) -> bool:
    """Whether `train.reward` names a Python function ('module:func') rather than 'rm'/'verifier'."""
    return bool(PYTHON_REF.match(value))


def load_reward_fn(ref: str, key: str = "train.reward") -> RewardFn:
    """The function `ref` ('package.module:func') names, wrapped to return a finite float.

    ConfigError (naming `key`) if it cannot be imported, is not callable, or cannot take the three
    positional arguments; a call that returns a non-number or a non-finite value raises ConfigError
    naming the function (a reward the optimiser cannot use); a call that raises becomes a
    StageFailedError naming the function, the exception and, through `where`, the rollout."""
    fn = import_ref(ref, key)
    if not callable(fn):
        raise ConfigError(f"{key}: '{ref}' is not callable")
    try:
        inspect.signature(fn).bind("prompt", "completion", {})
    except TypeError as exc:
        raise ConfigError(f"{key}: '{ref}' must accept (prompt, completion, row): {exc}") from None
    except ValueError:  # builtins without a signature: trust them
        pass

    def reward(prompt: str, completion: str, row: dict, where: str = "") -> float:
        """`where` (e.g. " on example '3'") tells the user which rollout the failure came from."""
        try:
            value = fn(prompt, completion, row)
        except Exception as exc:  # noqa: BLE001 - a bug in user code ends the stage with one message, not a traceback
            raise StageFailedError(f"{key}: '{ref}' raised {type(exc).__name__}: {exc}{where}") from exc
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: '{ref}' returned {value!r}{where}; a reward function must return a finite float")
        return float(value)

    reward.__name__ = getattr(fn, "__name__", "reward")
    reward.__doc__ = getattr(fn, "__doc__", None)
    return reward
