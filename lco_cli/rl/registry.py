"""The one registry of `train.algo`s.

An algorithm is an `Update` subclass decorated with `@register_algo("name")`; the class itself says what
it needs (`needs_reward_model`, `min_samples_per_prompt`, its loss `Config` for `train.algo_args`) and
checks its own settings (`Update.check`). The preset schema, `lco validate`, the train stage and the docs
all read this registry. A new algorithm is one module plus its tests (docs/architecture.md).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from lco_cli.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.rl.update import Update

#: Modules whose classes register the built-in algorithms when imported.
BUILTIN_MODULES = ("lco_cli.rl.lco", "lco_cli.rl.policy_gradient", "lco_cli.rl.ppo", "lco_cli.rl.distill")

_REGISTRY: dict[str, type["Update"]] = {}


def register_algo(name: str) -> Callable[[type["Update"]], type["Update"]]:
    """Class decorator: make `cls` the `train.algo` called `name` (sets `cls.name`)."""

    def add(cls: type["Update"]) -> type["Update"]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"train.algo {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def algorithms() -> dict[str, type["Update"]]:
    """Every registered algorithm, built-ins first (imported on first use: they need torch)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def get_algo(name: str) -> type["Update"]:
    known = algorithms()
    if name not in known:
        raise ConfigError(f"train.algo: {name!r} is not one of {', '.join(known)}")
    return known[name]


def unregister_algo(name: str) -> None:
    """Remove `name` (tests that register a throwaway algorithm clean up with this)."""
    _REGISTRY.pop(name, None)
