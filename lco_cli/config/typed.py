"""A generic typed-YAML builder: dataclass fields with docs and checks, every error collected.

Used by the preset schema (`config.schema`) and by each algorithm's own `Config` (`train.algo_args`)."""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
import json
from typing import Any, Union, get_args, get_origin


FLOAT32_MAX = 3.4028234663852886e38


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp) if a is not type(None)) + " or null"
    if origin is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    """Convert a YAML value to the field type, recording an error naming `key` on mismatch."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
        for arg in args:
            trial: list[str] = []
            out = coerce(value, arg, key, trial)
            if not trial:
                return out
        errors.append(f"{key}: expected {type_name(tp)}, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
            return tp()
        return build(tp, value, key, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{key}: expected a list, got {value!r}")
            return []
        (item_tp,) = get_args(tp)
        return [coerce(v, item_tp, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping, got {value!r}")
            return {}
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads '1e-6' as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # inf/nan pass every > / >= check yet break training
                errors.append(f"{key}: must be a finite number, got {value!r}")
                return None
            if abs(number) > FLOAT32_MAX:  # torch rejects it ("cannot be converted to type float") mid-run
                errors.append(f"{key}: {number:g} is beyond the float32 range (|x| <= {FLOAT32_MAX:.3g})")
                return None
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    errors.append(f"{key}: expected {type_name(tp)}, got {value!r}")
    return None


def choices_of(meta) -> tuple:
    """A field's allowed values: a tuple, or a callable returning one (a registry, read when needed)."""
    choices = meta["choices"]
    return tuple(choices()) if callable(choices) else tuple(choices)


def check_constraints(f: dataclasses.Field, value: Any, key: str, errors: list[str]) -> None:
    meta = f.metadata
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    for v in values:
        if "choices" in meta and v not in choices_of(meta):
            errors.append(f"{key}: {v!r} is not one of {', '.join(map(str, choices_of(meta)))}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if "gt" in meta and not v > meta["gt"]:
            errors.append(f"{key}: must be > {meta['gt']}, got {v}")
        if "ge" in meta and not v >= meta["ge"]:
            errors.append(f"{key}: must be >= {meta['ge']}, got {v}")
        if "lt" in meta and not v < meta["lt"]:
            errors.append(f"{key}: must be < {meta['lt']}, got {v}")
        if "le" in meta and not v <= meta["le"]:
            errors.append(f"{key}: must be <= {meta['le']}, got {v}")


def build(cls: type, data: dict, prefix: str, errors: list[str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"{prefix}.{k}" if prefix else str(k)
            errors.append(f"{where}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = coerce(data[name], hints[name], key, errors)
        check_constraints(f, value, key, errors)
        kwargs[name] = value
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not None or optional(hints[k])})
    except TypeError as exc:  # pragma: no cover - all fields have defaults
        errors.append(f"{prefix}: {exc}")
        return cls()


def optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)




def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every field, recursively — drives docs/presets.md."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.append((key, "section", "", f.metadata.get("doc", "")))
            rows.extend(field_docs(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        doc = f.metadata.get("doc", "")
        checks = [f"{k} {f.metadata[k]}" for k in ("gt", "ge", "lt", "le") if k in f.metadata]
        if "choices" in f.metadata:
            checks.append("one of " + ", ".join(map(str, choices_of(f.metadata))))
        if checks:
            doc += " (" + "; ".join(checks).replace("gt ", "> ").replace("ge ", ">= ").replace("lt ", "< ").replace("le ", "<= ") + ")"
        if f.metadata.get("operational"):
            doc += " Operational: changes no result, so not part of the stage's identity."
        rows.append((key, type_name(tp), json.dumps(default), doc))
    return rows


@functools.lru_cache(maxsize=None)
def marked_keys(cls: type, flag: str, prefix: str = "") -> frozenset[str]:
    """Dotted keys of every field whose metadata sets `flag` (e.g. 'operational'), recursively."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        if f.metadata.get(flag):
            keys.add(f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(hints[f.name]):
            keys |= marked_keys(hints[f.name], flag, f"{prefix}{f.name}.")
    return frozenset(keys)
