"""The Task interface, the task registry and the loading of `module:Class` references.

A task owns its train prompts, a seeded held-out split, how an example is rendered for a
tokenizer, reference solutions for SFT (`Example.demo`) and, optionally, a verifier. Built-in
tasks register themselves with `@register_task("name")`; a user's task is named in a preset as
`task.name: my_pkg.tasks:MyTask` and imported only then.
"""
from __future__ import annotations

import importlib
import logging
import os
import random
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lco_cli.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TaskConfig

logger = logging.getLogger("lco_cli.tasks")

#: `package.module:Attribute` (dotted module path, a colon, a dotted attribute path).
PYTHON_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

Verdict = tuple[str | None, bool]


@dataclass(frozen=True)
class Example:
    """One problem. `prompt` is the user-turn text before any template (render() adds it)."""

    id: str
    prompt: str
    answer: str | None = None  # the verifier's reference answer (None: the task has no verifier)
    demo: str | None = None  # the SFT reference response (None: the task has none)
    # The source row, for user reward functions; not part of equality/hash (rows hold lists).
    row: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


class Task:
    """Base class of tasks. Subclasses set `name`, `train`, `test` and override what differs.

    A user task subclasses this and is built by `from_config(cfg, seed)`, which by default calls
    `cls(cfg, seed)`; `cfg` is the preset's `task` section (`lco_cli.config.TaskConfig`).
    """

    name: str = ""
    has_verifier: bool = False
    #: Generation budget a response of this task needs (tokens); see `default_max_new_tokens`.
    max_new_tokens: int = 512
    train: list[Example]
    test: list[Example]

    @classmethod
    def from_config(cls, cfg: "TaskConfig", seed: int) -> "Task":
        return cls(cfg, seed)  # type: ignore[call-arg]

    @classmethod
    def default_max_new_tokens(cls, cfg: "TaskConfig") -> int:
        """Generation cap that fits this task's responses (rollouts, self pairs, eval).

        A classmethod so that `lco validate` can ask without loading any data."""
        return cls.max_new_tokens

    @classmethod
    def config_errors(cls, cfg: "TaskConfig") -> list[str]:
        """Problems of the `task` section for this task (`lco validate`); base: arith-only keys."""
        return unused_keys(cfg, ARITH_KEYS, cls.name or cfg.name)

    @classmethod
    def provides_demos(cls, cfg: "TaskConfig") -> bool:
        """Whether `Example.demo` is set (SFT with `sft.data.source: task`), known without data."""
        return True

    def render(self, example: Example, tokenizer: Any) -> str:
        """The exact model input text for `example` (base: the prompt as it is)."""
        return example.prompt

    def check(self, example: Example, response: str) -> Verdict:
        """(extracted answer, correct?) of one response; only for tasks with a verifier."""
        raise NotImplementedError(f"task {self.name!r} has no verifier")

    def check_batch(self, examples: Sequence[Example], responses: Sequence[str], timeout: float = 5.0) -> list[Verdict]:
        """Verdicts for many responses (one example per response); base: `check` one by one."""
        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
        return [self.check(e, r) for e, r in zip(examples, responses)]


#: Keys only `arith` reads; the others read DATA_KEYS.
ARITH_KEYS = ("op", "digits", "slip_rate")
DATA_KEYS = ("source", "prompt_field", "answer_field", "response_field", "limit")


def unused_keys(cfg: "TaskConfig", keys: Sequence[str], task_name: str) -> list[str]:
    """An error per key of `keys` set to a non-default value (a preset cannot set a key unread)."""
    from lco_cli.config import TaskConfig

    defaults = TaskConfig()
    return [f"task.{k}: not used by task '{task_name}'" for k in keys if getattr(cfg, k) != getattr(defaults, k)]


# --------------------------------------------------------------------------- registry

TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make `cls` the task `task.name: <name>` builds."""

    def add(cls: type[Task]) -> type[Task]:
        existing = TASKS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"task {name!r} is already registered ({existing.__module__}.{existing.__qualname__})")
        cls.name = name
        TASKS[name] = cls
        return cls

    return add


def cwd_importable() -> None:
    """Make the current directory importable, as `python -m` does. The `lco` console script and
    `accelerate launch` put only the script's folder on sys.path, so without this a package next
    to the preset would import under `python -m lco_cli` and nowhere else. Appended, not
    prepended: a stray file in the folder must not shadow an installed package."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def import_ref(ref: str, key: str) -> Any:
    """The object `module:attr` names, imported now; ConfigError naming `key` if it cannot be."""
    if not PYTHON_REF.match(ref):
        raise ConfigError(f"{key}: '{ref}' is not 'package.module:Name'")
    module_name, attr_path = ref.split(":", 1)
    cwd_importable()
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of user code at import is the user's to see
        raise ConfigError(f"{key}: cannot import module '{module_name}' for '{ref}': {type(exc).__name__}: {exc}") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: module '{module_name}' has no attribute '{attr_path}'")
        obj = getattr(obj, part)
    return obj


def task_class(name: str) -> type[Task]:
    """The class `task.name` refers to: a registered name or a `module:Class` of a Task subclass."""
    if name in TASKS:
        return TASKS[name]
    if ":" not in name:
        raise ConfigError(f"task.name: unknown task '{name}' (registered: {', '.join(sorted(TASKS))}; "
                          "or a Python class as 'package.module:ClassName')")
    cls = import_ref(name, "task.name")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task.name: '{name}' is not a subclass of lco_cli.tasks.Task")
    return cls


def held_out_split(examples: list[Example], n_test: int, seed: int, name: str) -> tuple[list[Example], list[Example]]:
    """(train, test): `n_test` examples held out by a permutation seeded with `seed` (task.split_seed)."""
    if n_test >= len(examples):
        raise ConfigError(f"task.n_test: {n_test} held-out examples leave none to train on ({len(examples)} usable rows)")
    order = list(range(len(examples)))
    random.Random(f"{name}-split-{seed}").shuffle(order)
    test = sorted(order[:n_test])  # file order within each split: stable, readable logs
    train = sorted(order[n_test:])
    return [examples[i] for i in train], [examples[i] for i in test]


def row_id(row: dict, index: int) -> str:
    """The row's own id (`unique_id`, `id`) when it has one, else its position."""
    for key in ("unique_id", "id"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)
