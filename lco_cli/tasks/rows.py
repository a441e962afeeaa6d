"""Rows of a task's `task.source`: a local JSON / JSONL / parquet file, a folder of them, or a
hub dataset id (with `task.split`).

JSON and JSONL are parsed here with `json` rather than through `datasets`, so that a bad file
ends in one message naming the key, the file and the line (datasets reports an Arrow error);
parquet and hub datasets go through `datasets`. Every failure is a ConfigError (exit 2) or, for
a path that does not exist, a MissingArtifactError (exit 3).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lco_cli.errors import ConfigError, MissingArtifactError

SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class SourceRow:
    """One row and where it came from (for messages: 'data.jsonl row 12')."""

    origin: str
    index: int
    data: dict

    @property
    def where(self) -> str:
        return f"{self.origin} row {self.index}"


def is_local(source: str) -> bool:
    """A path (existing, or spelled like one) rather than a hub id 'org/name'."""
    path = Path(source).expanduser()
    return path.exists() or path.suffix in SUFFIXES or source.startswith((".", "/", "~")) or source.count("/") != 1


def read_rows(source: str, split: str = "train", key: str = "task.source") -> list[SourceRow]:
    """Every row of `source` in a stable order (files sorted by path); errors name `key`."""
    if not is_local(source):
        return _hub_rows(source, split, key)
    path = Path(source).expanduser()
    if not path.exists():
        raise MissingArtifactError(f"{key}: file not found: {path}")
    files = _data_files(path, key)
    rows = [row for f in files for row in _file_rows(f, key)]
    if not rows:
        raise ConfigError(f"{key}: {path} has no rows")
    return rows


def _data_files(path: Path, key: str) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise ConfigError(f"{key}: {path} is not a .jsonl, .json or .parquet file")
        return [path]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in f.relative_to(path).parts))
    if not files:
        raise ConfigError(f"{key}: no .jsonl, .json or .parquet files under {path}")
    return files


def _file_rows(path: Path, key: str) -> list[SourceRow]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path, key)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{key}: {path} is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"{key}: {path} is empty")
    if suffix == ".jsonl":
        items = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                items.append((lineno, _decode(line, path, f"line {lineno}", key)))
    else:
        data = _decode(text, path, "", key)
        if not isinstance(data, list):
            raise ConfigError(f"{key}: {path} must hold a JSON list of objects (got {type(data).__name__})")
        items = list(enumerate(data))
    out = []
    for index, item in items:
        if not isinstance(item, dict):
            raise ConfigError(f"{key}: {path} row {index} is not a JSON object")
        out.append(SourceRow(str(path), index, item))
    return out


def _decode(text: str, path: Path, where: str, key: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = where or f"line {exc.lineno}"
        raise ConfigError(f"{key}: {path} {at} is not valid JSON ({exc.msg})") from None


def _parquet_rows(path: Path, key: str) -> list[SourceRow]:
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
        raise ConfigError(f"{key}: {path} is not a readable parquet file ({str(exc).splitlines()[0]})") from None
    return [SourceRow(str(path), i, row) for i, row in enumerate(ds)]


def _hub_rows(source: str, split: str, key: str) -> list[SourceRow]:
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; the user needs the id
        raise MissingArtifactError(f"{key}: could not load dataset '{source}' (split {split}): "
                                   f"{str(exc).splitlines()[0]}") from None
    origin = f"{source}[{split}]"
    return [SourceRow(origin, i, row) for i, row in enumerate(ds)]
