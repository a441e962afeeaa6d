"""The one registry of `train.algo`s.

An entry is a spec class (`rl.spec.AlgoSpec`: its `algo_args` dataclass, what it needs, defaults,
checks) registered with `@register_algo("name")`, plus where its `Update` lives. The built-ins are
declared in the torch-free `rl.specs`, so the preset schema, `lco validate`, the run planner and the
docs read the registry without importing torch; the train stage gets the `Update` from `update_class`,
importing it on first use. An algorithm written outside lco is one `Update` subclass (an `AlgoSpec`
too) registered directly. A new algorithm is one module plus its tests (docs/architecture.md).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from lco_cli.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.rl.spec import AlgoSpec
    from lco_cli.rl.update import Update

#: The torch-free module whose specs register the built-in algorithms when imported.
BUILTIN_SPECS = "lco_cli.rl.specs"

_REGISTRY: dict[str, type["AlgoSpec"]] = {}
_UPDATES: dict[str, str] = {}  # name -> "module:Class" of the Update, for specs registered apart from it


def register_algo(name: str, update: str | None = None) -> Callable[[type["AlgoSpec"]], type["AlgoSpec"]]:
    """Class decorator: make `cls` the `train.algo` called `name` (sets `cls.name`).

    `cls` is an `Update` subclass, or a torch-free spec whose `Update` is `update` ("module:Class")."""

    def add(cls: type["AlgoSpec"]) -> type["AlgoSpec"]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"train.algo {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        if update is None:
            _UPDATES.pop(name, None)
        else:
            _UPDATES[name] = update
        return cls

    return add


def algorithms() -> dict[str, type["AlgoSpec"]]:
    """Every registered algorithm's spec, built-ins first (torch-free)."""
    importlib.import_module(BUILTIN_SPECS)
    return dict(_REGISTRY)


def get_algo(name: str) -> type["AlgoSpec"]:
    known = algorithms()
    if name not in known:
        raise ConfigError(f"train.algo: {name!r} is not one of {', '.join(known)}")
    return known[name]


def update_class(name: str) -> type["Update"]:
    """The `Update` that trains `name` (imports it, and so torch, on first use)."""
    spec = get_algo(name)
    if name not in _UPDATES:
        return spec  # an Update registered directly
    module, _, attr = _UPDATES[name].partition(":")
    update = getattr(importlib.import_module(module), attr)
    if not issubclass(update, spec):
        raise TypeError(f"{update.__qualname__} must subclass its spec {spec.__qualname__}")
    return update


def unregister_algo(name: str) -> None:
    """Remove `name` (tests that register a throwaway algorithm clean up with this)."""
    _REGISTRY.pop(name, None)
    _UPDATES.pop(name, None)
