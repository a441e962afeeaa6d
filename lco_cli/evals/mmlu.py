"""MMLU and MMLU-Redux (`mmlu`, `mmlu_redux`) through lm-evaluation-harness (extra `lco[lmeval]`).

The harness runs on the policy's model folder with its own task templates, read from the installed
package so that the prompt, the answer format and the metric are exactly the harness's:
- `mmlu`: `tasks/mmlu/default/_default_template_yaml` — log-likelihood of ` A`..` D` after
  `question / A. .. D. / Answer:`, metric `acc`, one task per subject with the subject's
  description line ("The following are multiple choice questions (with answers) about ...");
- `mmlu_redux`: `tasks/mmlu-redux/generative/_default_template_yaml` — the harness's MMLU-Redux
  2.0 task (its data: only questions the re-annotation kept, `error_type == ok`): the model writes
  the letter, metric `exact_match` after the regex filter.
Only the data source changes: the hub dataset (`cais/mmlu`, `fxmarty/mmlu-redux-2.0-ok`) by
default, or `eval.data.<name>`, a local file of the same schema (`question`, `choices` (4),
`answer` (0-3), `subject`); rows of MMLU-Redux whose `error_type` is not `ok` are left out, as in
the harness's data. Accuracy over all questions (the harness's size-weighted group mean), with its
stderr; the row records the harness version and the task template.
"""
from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

from lco_cli.errors import ConfigError
from lco_cli.evals.benchmarks import Benchmark, load_rows, register
from lco_cli.evals.job import EvalJob, data_errors, mean_and_stderr, write_samples

TEMPLATES = {"mmlu": ("mmlu/default/_default_template_yaml", "cais/mmlu", "acc"),
             "mmlu_redux": ("mmlu-redux/generative/_default_template_yaml", "fxmarty/mmlu-redux-2.0-ok", "exact_match")}
FIELDS = ("question", "choices", "answer", "subject")


def require_harness(name: str) -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"eval.benchmarks: {name} needs lm-evaluation-harness (pip install 'lco[lmeval]')")


def template(name: str) -> tuple[dict, str]:
    """(the harness's task template as a dict, its path inside the package)."""
    import lm_eval
    import yaml

    rel = TEMPLATES[name][0]
    path = Path(lm_eval.__file__).parent / "tasks" / rel
    return yaml.safe_load(path.read_text()), f"lm_eval/tasks/{rel}"


def local_rows(path: str, name: str, limit: int | None) -> list[dict]:
    with data_errors(name):
        rows = [dict(r) for r in load_rows(path)]
    for i, row in enumerate(rows):
        missing = [f for f in FIELDS if f not in row]
        if missing or len(row["choices"]) != 4:
            raise ConfigError(f"eval.data.{name}: {path} row {i}: needs fields {', '.join(FIELDS)} with 4 choices")
    if name == "mmlu_redux":
        rows = [r for r in rows if (r.get("error_type") or "ok") == "ok"]
    return rows[:limit] if limit else rows


def task_configs(name: str, rows: list[dict], tmp: Path, max_new_tokens: int) -> list[dict]:
    """One harness task per subject, from the harness template, reading a local JSONL; generative
    templates answer within `eval.max_new_tokens` tokens (the answer is one letter)."""
    base, _ = template(name)
    tasks = []
    for subject in sorted({r["subject"] for r in rows}):
        f = tmp / f"{subject}.jsonl"
        f.write_text("".join(json.dumps({k: r[k] for k in FIELDS}) + "\n" for r in rows if r["subject"] == subject))
        cfg = {**base, "task": f"lco_{name}_{subject}", "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": {"test": str(f)}}, "test_split": "test",
               "description": f"The following are multiple choice questions (with answers) about "
                              f"{subject.replace('_', ' ')}.\n\n"}
        if "generation_kwargs" in cfg:
            cfg["generation_kwargs"] = {**cfg["generation_kwargs"], "max_gen_toks": max_new_tokens}
        cfg.pop("fewshot_split", None)  # zero-shot, the harness's default for these tasks
        cfg.pop("fewshot_config", None)
        tasks.append(cfg)
    return tasks


def run_harness(model_ref: str, tasks: list[dict], batch_size: int, seed: int):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    import torch

    lm = HFLM(pretrained=model_ref, batch_size=batch_size, device="cuda" if torch.cuda.is_available() else "cpu")
    return simple_evaluate(model=lm, tasks=tasks, num_fewshot=0, log_samples=True, random_seed=seed,
                           numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)


class HarnessBenchmark(Benchmark):
    def __init__(self, name: str):
        self.name = name

    def config_errors(self, eval_cfg) -> list[str]:
        try:
            require_harness(self.name)
        except ConfigError as exc:
            return [exc.message]
        return []

    def preflight(self, eval_cfg) -> None:
        require_harness(self.name)

    def evaluate(self, job: EvalJob) -> list[dict]:
        import lm_eval

        if job.policy.model_ref is None:
            raise ConfigError(f"eval.policies: {job.policy.name} has no model folder; {self.name} runs on a "
                              "saved model (use a stage name, a path or a hub id)")
        task_config, template_path = template(self.name)
        metric = TEMPLATES[self.name][2]
        with tempfile.TemporaryDirectory() as tmp:
            if job.data_path is None:
                from datasets import load_dataset

                rows = [dict(r) for r in load_dataset(TEMPLATES[self.name][1], "all", split="test")]
                rows = rows[: job.settings.limit] if job.settings.limit else rows
            else:
                rows = local_rows(job.data_path, self.name, job.settings.limit)
            out = run_harness(job.policy.model_ref, task_configs(self.name, rows, Path(tmp), job.settings.max_new_tokens), job.settings.batch_size,
                              job.seed)
        samples = [{"task": task, "question": s["doc"]["question"], "answer": s["doc"]["answer"],
                    "correct": float(s[metric]), "response": s.get("filtered_resps")}
                   for task, task_samples in out["samples"].items() for s in task_samples]
        write_samples(job, self.name, json.loads(json.dumps(samples, default=str)))
        mean, se = mean_and_stderr([s["correct"] for s in samples])
        return [{"policy": job.policy.name, "benchmark": self.name, "metric": "accuracy", "mean": mean, "stderr": se,
                 "n_problems": len(samples), "harness": f"lm-eval {lm_eval.__version__}", "task_template": template_path,
                 "harness_metric": metric, "num_fewshot": 0, "task_config": task_config,
                 "max_gen_toks": job.settings.max_new_tokens if "generation_kwargs" in task_config else None}]


register(HarnessBenchmark("mmlu"))
register(HarnessBenchmark("mmlu_redux"))
