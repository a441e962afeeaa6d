"""Tasks: where prompts, reference solutions and verdicts come from (docs/tasks.md).

The registry maps `task.name` to a `Task` class: `arith` (the `tiny` default), `math` (MATH-schema
rows, math-verify), `prompts` (instructions, no verifier), or a user's `package.module:Class`
(imported only when a preset names it). Add a task in one file: subclass `Task`, decorate it with
`@register_task("name")`, and import the module here.

Stage loops use: `get_task(cfg, seed)`, `task.train` / `task.test` (`Example`s),
`task.render(example, tokenizer)`, `task.check_batch(examples, responses)` when
`task.has_verifier`, and `greedy_accuracy(...)` for held-out accuracy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from lco_cli.tasks.arith import ArithTask, carry_slip
from lco_cli.tasks.base import TASKS, Example, Task, import_ref, register_task, task_class
from lco_cli.tasks.math import MathTask
from lco_cli.tasks.prompts import PromptsTask

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TaskConfig

__all__ = ["TASKS", "ArithTask", "Example", "MathTask", "PromptsTask", "Task", "carry_slip", "get_task", "greedy_accuracy",
           "import_ref", "register_task", "task_class"]


def get_task(cfg: "TaskConfig", seed: int) -> Task:
    """Build the task `cfg.name` names (its data loaded now). `seed` is the run's seed; the
    held-out split follows `cfg.split_seed` so that every seed of a study shares one split."""
    cls = task_class(cfg.name)
    task = cls.from_config(cfg, seed)
    if not getattr(task, "name", ""):
        task.name = cfg.name
    task.max_new_tokens = cls.default_max_new_tokens(cfg)  # this source's budget (tiny-math: 128)
    return task


def greedy_accuracy(model, tokenizer, task: Task, n_problems: int, batch_size: int = 256,
                    max_new_tokens: int | None = None, timeout: float = 5.0) -> dict:
    """Held-out greedy accuracy on the first `n_problems` test problems (fixed, so comparable):
    prompts rendered by the task, responses judged by its verifier (in one batch).
    `max_new_tokens` None = the task's own budget (arith 16, math 2,048; generation stops at EOS)."""
    from lco_cli.engines.generation import HFEngine, encode_prompts

    problems = task.test[:n_problems]
    if not problems or not task.has_verifier:
        return {"heldout_acc": None, "n_problems": 0}
    engine = HFEngine(model, tokenizer, batch_size)
    prompts = [task.render(p, tokenizer) for p in problems]
    roll = engine.generate(encode_prompts(tokenizer, prompts), 1, temperature=0.0,
                           max_new_tokens=max_new_tokens or task.max_new_tokens)
    verdicts = task.check_batch(problems, roll.texts, timeout=timeout)
    correct = sum(ok for _, ok in verdicts)
    return {"heldout_acc": correct / len(problems), "n_problems": len(problems)}
