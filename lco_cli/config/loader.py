"""Presets from YAML: bundled names or paths, KEY=VALUE overrides, validation with every problem at once."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
from pathlib import Path
from typing import Any

import yaml

from lco_cli.config.schema import BENCHMARK_NAMES, DEFAULT_PRESET, Preset
from lco_cli.config.typed import build
from lco_cli.errors import ConfigError
from lco_cli.tasks.rewards import is_reward_ref, load_reward_fn


def _cross_checks(p: Preset, errors: list[str]) -> None:
    """Constraints that involve more than one field."""
    t = p.train
    if p.task.slip_rate > 0 and p.task.op != "add":
        errors.append("task.slip_rate: the carry slip is defined for task.op 'add' only")
    if p.rm.pairs.source in ("file", "hub") and not p.rm.pairs.path:
        errors.append(f"rm.pairs.path: required when rm.pairs.source is '{p.rm.pairs.source}'")
    for tracker in p.logging.report_to:
        import importlib.util

        if importlib.util.find_spec(tracker) is None:
            errors.append(f"logging.report_to: '{tracker}' needs its package (pip install {tracker})")
    if t.rollout.engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            errors.append("train.rollout.engine: 'vllm' needs the optional extra (pip install 'lco[vllm]')")
    for stage in ("sft", "rm"):
        sec = getattr(p, stage)
        if sec.batch_size % sec.micro_batch_size and sec.micro_batch_size < sec.batch_size:
            errors.append(f"{stage}.micro_batch_size: must divide {stage}.batch_size ({sec.batch_size})")
    errors.extend(eval_errors(p))
    reward_errors(t.reward, errors)
    from lco_cli.rl.registry import get_algo  # the algorithms validate their own settings

    errors.extend(get_algo(t.algo).check(t))
    task_checks(p, errors)


def unread_keys(p: Preset) -> list[str]:
    """`train` keys set in the preset that the chosen algorithm's loss does not read (warnings, not
    errors: a preset may keep keys for other runs)."""
    from lco_cli.rl.registry import get_algo

    return get_algo(p.train.algo).unread_keys(p.train)


def reward_errors(reward: str, errors: list[str]) -> None:
    """`train.reward`: rm, verifier, or a function that imports now as the train stage will
    import it (a typo in the reference must not wait for the stage to start)."""
    if reward in ("rm", "verifier"):
        return
    if not is_reward_ref(reward):
        errors.append(f"train.reward: {reward!r} is not one of rm, verifier (or a function reference 'module:function')")
        return
    try:
        load_reward_fn(reward)
    except ConfigError as exc:
        errors.append(exc.message)


# Per-step sizes above this are typos: a million sequences per step is beyond any machine's memory,
# and a batch of 10^9 indices alone takes minutes to build before step 1.
MAX_PER_STEP = 2**20
# Adam moves every parameter by about lr per step, so lr = 1e3 already destroys a model (and is
# left to the divergence guards); far above, torch's Adam overflows float32 inside its update.
MAX_LR = 1e6
SIZE_KEYS = ("batch_size", "micro_batch_size", "samples_per_prompt", "samples", "n_prompts", "max_pairs",
             "max_pairs_per_prompt", "max_new_tokens", "max_length", "loss_chunk_size", "minibatches", "update_epochs",
             "eval_problems", "n_test")


def size_bound_errors(p: Preset) -> list[str]:
    """Per-step sizes and learning rates beyond any sane value (typos)."""
    out = []
    stack = [("", to_dict(p))]
    while stack:
        prefix, node = stack.pop()
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and k != "algo_args":
                stack.append((key + ".", v))
            elif k in SIZE_KEYS and isinstance(v, int) and v > MAX_PER_STEP:
                out.append(f"{key}: {v:,} is beyond any sane size (at most {MAX_PER_STEP:,})")
            elif k == "lr" and isinstance(v, float) and v > MAX_LR:
                out.append(f"{key}: {v:g} is beyond any sane learning rate (at most {MAX_LR:g})")
    return sorted(out)


def eval_errors(p: Preset) -> list[str]:
    """Eval-only cross checks: data files name known benchmarks; each benchmark's own needs
    (models, optional extras) come from the benchmark itself (`Benchmark.config_errors`)."""
    from lco_cli.evals.benchmarks import get_benchmark

    errors = [f"eval.data.{name}: unknown benchmark (known: {', '.join(BENCHMARK_NAMES)})"
              for name in p.eval.data if name not in BENCHMARK_NAMES]
    for name in p.eval.benchmarks:
        if name == "arith" and p.task.name != "arith":  # never fall back to arith under another task
            errors.append(f"eval.benchmarks: 'arith' is the arith task's held-out split; with task.name "
                          f"'{p.task.name}' use 'task'")
        elif name not in ("task", "arith"):
            errors.extend(get_benchmark(name).config_errors(p.eval))
    if "task" in p.eval.benchmarks:
        from lco_cli.tasks import task_class

        try:
            if not task_class(p.task.name).has_verifier:
                errors.append(f"eval.benchmarks: 'task' needs a task with a verifier (task '{p.task.name}' has none)")
        except ConfigError:
            pass  # the task section reports an unknown task itself
    return errors


def task_checks(p: Preset, errors: list[str]) -> None:
    """The `task` section against the task it names and the stages that use it (docs/tasks.md).

    Errors: an unknown or unimportable task; arith-only keys on another task; a verifier reward
    or verifier-labelled pairs for a task without a verifier; SFT on task demonstrations the task
    does not have. Warnings (logged, not errors): a generation cap below a quarter of the task's
    `default_max_new_tokens` (math 2,048 -> under 512 tokens; arith 16 -> under 4), which cannot
    hold a typical response and would score almost every rollout as truncated or wrong.
    """
    from lco_cli.tasks import task_class
    from lco_cli.tasks.base import logger

    cfg = p.task
    try:
        cls = task_class(cfg.name)
    except ConfigError as exc:
        errors.append(exc.message)
        return
    errors.extend(cls.config_errors(cfg))
    reasons = {"train.reward": p.train.reward == "verifier", "rm.pairs.source": p.rm.pairs.source == "self"}
    if not cls.has_verifier:
        errors.extend(f"{key}: task '{cfg.name}' has no verifier; " + ("use train.reward: rm" if key == "train.reward" else
                      "use rm.pairs.source: file or hub") for key, bad in reasons.items() if bad)
    if p.sft.data.source == "task" and not cls.provides_demos(cfg):
        errors.append(f"sft.data.source: task '{cfg.name}' has no reference responses here (set task.response_field, "
                      "or sft.data.source to a file or hub dataset)")
    if isinstance(p.rm.pairs.sampler, list) and not p.rm.pairs.sampler:
        errors.append("rm.pairs.sampler: an empty list (name at least one model)")
    floor = cls.default_max_new_tokens(cfg) // 4
    caps = {"train.rollout.max_new_tokens": p.train.rollout.max_new_tokens, "eval.max_new_tokens": p.eval.max_new_tokens}
    if p.rm.pairs.source == "self":
        caps["rm.pairs.max_new_tokens"] = p.rm.pairs.max_new_tokens
    for key, cap in caps.items():
        if cap < floor:
            logger.warning("warning: %s=%d is too small for task '%s' (its responses need about %d tokens; "
                           "warned below %d)", key, cap, cfg.name, cls.default_max_new_tokens(cfg), floor)


def from_dict(data: dict) -> Preset:
    """Build and validate a Preset; raises ConfigError listing every problem."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError("preset: expected a YAML mapping at the top level")
    preset = build(Preset, data, "", errors)
    if not errors:
        resolve_generation_caps(preset)
    errors.extend(size_bound_errors(preset))
    if not errors:
        _cross_checks(preset, errors)
    if errors:
        raise ConfigError(f"invalid preset ({len(errors)} problem{'s' * (len(errors) > 1)})", errors)
    return preset


def resolve_generation_caps(p: Preset) -> None:
    """Generation caps left null (`train.rollout`, `rm.pairs`, `eval`) become the task's budget (arith 16,
    math the paper's 2,048), so the resolved preset — config.yaml, the stage identity — holds the number used."""
    from lco_cli.tasks import task_class

    try:
        budget = task_class(p.task.name).default_max_new_tokens(p.task)
    except ConfigError:
        budget = 16  # an unknown task is reported by task_checks; any number keeps the other checks going
    for section in (p.train.rollout, p.rm.pairs, p.eval):
        if section.max_new_tokens is None:
            section.max_new_tokens = budget


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


# --------------------------------------------------------------------------- presets & overrides


def bundled_presets() -> dict[str, Path]:
    """Bundled preset name -> file (shipped inside the installed package)."""
    root = importlib.resources.files("lco_cli.presets")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def read_preset_file(preset: str | None) -> tuple[str, dict]:
    """Return (preset name, raw mapping) for a bundled name or a YAML path."""
    preset = preset or DEFAULT_PRESET
    bundled = bundled_presets()
    if preset in bundled:
        path = bundled[preset]
    else:
        path = Path(preset)
        if not path.suffix and not path.exists():
            raise ConfigError(f"preset: unknown preset '{preset}' (bundled: {', '.join(sorted(bundled))}; or give a YAML path)")
        if not path.is_file():
            raise ConfigError(f"preset: file not found: {path}")
    data = parse_preset_yaml(path)
    data.setdefault("name", path.stem)
    return path.stem, data


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"preset: duplicate key '{key}' (lines {seen[key] + 1} and {key_node.start_mark.line + 1} "
                                  f"of {self.name}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# A preset holds a few hundred values; an alias bomb ("billion laughs") expands to billions
# through shared references, which hang any walk over the data (hashing, validation).
MAX_VALUES = 100_000


def count_values(data: Any, budget: int = MAX_VALUES) -> int:
    """Number of values reached by walking `data` (aliases counted each time), stopping at `budget`."""
    seen, stack = 0, [data]
    while stack and seen <= budget:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return seen


# A preset holds a few hundred values nested a few levels deep. A file far beyond that is refused
# from its event stream, stopping at the first bound crossed, before anything is built from it:
# building a 10,000-deep file recurses past Python's limit (the composer takes ~3 frames a level,
# so MAX_DEPTH stays far below 1,000 / 3), and a 200,000-item list takes seconds to build.
MAX_DEPTH = 64
MAX_NODES = 10_000


def shape_problem(text: str) -> str | None:
    """What makes `text` no preset-sized YAML (too deep, too many values), or None; the YAML
    errors of the part read so far propagate."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        nodes += isinstance(event, yaml.NodeEvent)
        if depth > MAX_DEPTH:
            return f"nests more than {MAX_DEPTH} levels deep"
        if nodes > MAX_NODES:
            return f"holds more than {MAX_NODES:,} values"
    return None


SMALL = "a preset is a small mapping (a few hundred values, a few levels deep)"


def parse_preset_yaml(path: Path) -> dict:
    """The preset file as a mapping: exit 2 for unreadable, invalid or empty YAML, duplicate keys,
    files far too large or deep for a preset, and alias bombs."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"preset: {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        if problem := shape_problem(text):
            raise ConfigError(f"preset: {path} {problem}: {SMALL}")
        loader = StrictLoader(text)
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset: {path} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"preset: {path} is empty (write at least `name: ...`, or use a bundled preset such as 'tiny')")
    if not isinstance(data, dict):
        raise ConfigError(f"preset: {path} must hold a mapping at the top level")
    if count_values(data) > MAX_VALUES:
        raise ConfigError(f"preset: {path} expands to more than {MAX_VALUES:,} values (YAML aliases nested too deep?)")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.beta=0.5' -> (['train', 'beta'], 0.5); values parse as YAML scalars or flow lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE (e.g. train.beta=0.5)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override '{text}': empty key")
    try:
        if problem := shape_problem(raw):  # the key only: the value itself may be huge
            raise ConfigError(f"override '{key.strip()}': the value {problem}: {SMALL}")
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': value is not valid YAML") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load(preset: str | None, overrides: list[str] = ()) -> tuple[str, Preset]:
    """Resolve defaults + preset file + overrides into a validated Preset."""
    preset_name, data = read_preset_file(preset)
    data = apply_overrides(data, list(overrides))
    return preset_name, from_dict(data)


def config_hash(obj: Any) -> str:
    blob = json.dumps(obj if isinstance(obj, dict) else to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj if isinstance(obj, dict) else to_dict(obj), sort_keys=False)
