"""Inputs checked before any work: every local path a preset names exists (and a model path is a
model), data files are readable (UTF-8, valid JSON/JSONL rows, not empty), hub ids are well formed.

`lco validate` runs these for the whole preset; a stage runs them for the sections it reads, so a
bad file ends with one message naming the key, the file and the row — never a traceback from
deep inside `datasets`. Nothing here touches the network.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from lco_cli.errors import ConfigError, MissingArtifactError

# Values of path-like keys that are not paths: stage names and the built-in specs.
SYMBOLIC = {"base", "init", "task", "sft", "rm", "train", "pi_star"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def _is_symbolic(ref: str) -> bool:
    """Stage names and the built-in model/data specs (`tiny`, `tiny-math`, `random:<arch>`)."""
    return ref in SYMBOLIC or ref in ("tiny", "tiny-math") or ref.startswith(("tiny:", "tiny-math:", "random:"))


def model_refs(preset, sections) -> list[tuple[str, str]]:
    """(key, value) of every model reference in `sections` (plus model.policy)."""
    refs = [("model.policy", preset.model.policy)]
    if "sft" in sections:
        refs.append(("sft.init_from", preset.sft.init_from))
    if "rm" in sections:
        samplers = preset.rm.pairs.sampler if isinstance(preset.rm.pairs.sampler, list) else [preset.rm.pairs.sampler]
        refs += [("rm.init_from", preset.rm.init_from)]
        refs += [(f"rm.pairs.sampler[{i}]" if len(samplers) > 1 else "rm.pairs.sampler", s) for i, s in enumerate(samplers)]
    if "train" in sections:
        refs += [("train.init_from", preset.train.init_from), ("train.advantage_model", preset.train.advantage_model or "")]
    if "eval" in sections:
        refs += [(f"eval.policies[{i}]", p) for i, p in enumerate(preset.eval.policies)]
    return [(k, v) for k, v in refs if v and not _is_symbolic(v)]


def data_refs(preset, sections) -> list[tuple[str, str]]:
    """(key, value) of every data file or dataset reference in `sections`."""
    refs = []
    if preset.task.source and not _is_symbolic(preset.task.source):
        refs.append(("task.source", preset.task.source))
    if "sft" in sections and preset.sft.data.source != "task":
        refs.append(("sft.data.source", preset.sft.data.source))
    if "rm" in sections and preset.rm.pairs.source in ("file", "hub") and preset.rm.pairs.path:
        refs.append(("rm.pairs.path", preset.rm.pairs.path))
    if "eval" in sections:
        refs += [(f"eval.data.{name}", path) for name, path in preset.eval.data.items()]
    return refs


def _looks_like_path(ref: str) -> bool:
    """A model reference that is no hub id 'org/name' (what `models.resolve_model_ref` accepts)."""
    return _looks_like_file(ref) or not HUB_ID.match(ref)


def _looks_like_file(ref: str) -> bool:
    """A data reference that names a file (datasets also has ids without an org, e.g. 'gsm8k')."""
    return ref.startswith((".", "/", "~")) or Path(ref).suffix in DATA_SUFFIXES + (".yaml",)


def check_model_ref(key: str, ref: str) -> None:
    path = Path(ref).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise MissingArtifactError(f"{key}: {ref} is not a model folder (no config.json; expected what "
                                       "save_pretrained writes)")
        return
    if _looks_like_path(ref):
        raise MissingArtifactError(f"{key}: {ref} does not exist (and is not a stage name or a hub id 'org/name')")


def check_data_ref(key: str, ref: str) -> None:
    path = Path(ref).expanduser()
    if path.is_file():
        check_data_file(key, path)
    elif path.is_dir():
        return  # a folder of files, read by `datasets`
    elif _looks_like_file(ref) or key.startswith("eval.data."):  # eval.data takes local files only
        raise MissingArtifactError(f"{key}: file not found: {ref}")


def check_data_file(key: str, path: Path) -> None:
    """Exit 2 naming key, file and row for an empty, binary, non-UTF-8 or malformed JSON/JSONL file.

    It reads the file once; that is seconds for a gigabyte, paid before hours of training."""
    data = path.read_bytes()
    if not data.strip():
        raise ConfigError(f"{key}: {path} is empty")
    if path.suffix == ".parquet":
        if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
            raise ConfigError(f"{key}: {path} is not a parquet file (no PAR1 magic)")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{key}: {path} row {row}: not UTF-8 text (byte {exc.start}; binary file or another encoding?)") from None
    if "\x00" in text:
        row = text[: text.index("\x00")].count("\n") + 1
        raise ConfigError(f"{key}: {path} row {row}: NUL byte (a binary file?)")
    if path.suffix == ".jsonl" or (path.suffix != ".json" and not text.lstrip().startswith("[")):
        for row, line in enumerate(text.splitlines(), 1):
            if line.strip():
                _parse_row(key, path, row, line, record=True)
    else:
        _parse_row(key, path, None, text, record=False)


def _parse_row(key: str, path: Path, row: int | None, text: str, record: bool) -> None:
    where = f" row {row}" if row is not None else ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        line = f" (line {exc.lineno})" if row is None else ""
        raise ConfigError(f"{key}: {path}{where}{line}: invalid JSON: {exc.msg}") from None
    if record and not isinstance(value, dict):
        raise ConfigError(f"{key}: {path}{where}: expected a JSON object per line, got {type(value).__name__}")
    if not record and not isinstance(value, (list, dict)):
        raise ConfigError(f"{key}: {path}: expected a list of records, got {type(value).__name__}")


def check_inputs(preset, sections) -> None:
    """Every model and data reference of `sections` (first problem raises)."""
    for key, ref in model_refs(preset, sections):
        check_model_ref(key, ref)
    for key, ref in data_refs(preset, sections):
        check_data_ref(key, ref)


def input_problems(preset, sections) -> list[tuple[int, str]]:
    """(exit code, message) for every problem, for `lco validate` (reports all at once)."""
    out = []
    for key, ref in model_refs(preset, sections):
        try:
            check_model_ref(key, ref)
        except (ConfigError, MissingArtifactError) as exc:
            out.append((exc.exit_code, exc.message))
    for key, ref in data_refs(preset, sections):
        try:
            check_data_ref(key, ref)
        except (ConfigError, MissingArtifactError) as exc:
            out.append((exc.exit_code, exc.message))
    return out


def hub_refs(preset, sections) -> list[str]:
    """'key=id' for every reference in `sections` that can only be a hub id (no such local path)."""
    models = [f"{k}={v}" for k, v in model_refs(preset, sections) if not Path(v).expanduser().exists() and not _looks_like_path(v)]
    data = [f"{k}={v}" for k, v in data_refs(preset, sections)
            if not Path(v).expanduser().exists() and not _looks_like_file(v) and not k.startswith("eval.data.")]
    return models + data


def hub_error(exc: BaseException, preset=None, sections=()) -> MissingArtifactError | None:
    """A failed hub download (offline, unknown id, gated) as exit 3 naming what was asked for."""
    module = type(exc).__module__ or ""
    text = str(exc)
    from_hub = module.startswith(("huggingface_hub", "requests", "urllib3", "httpx")) or any(
        needle in text for needle in ("huggingface.co", "valid model identifier", "HF_HUB_OFFLINE", "offline mode",
                                      "Couldn't reach", "doesn't exist on the Hub", "Repository Not Found"))
    if not from_hub:
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    asked = hub_refs(preset, sections) if preset is not None else []
    named = f" ({', '.join(asked)})" if asked else ""
    return MissingArtifactError(f"could not fetch from the Hugging Face hub{named}: {first}")
