"""Reward-model benchmark (`reward`): each policy answers a prompt set once, every model in
`eval.reward_models: {name: path or hub id}` scores each (prompt, response), and the rows report
the mean score per model (`reward/<name>`) and their average (`reward/avg`) — the general form of
the paper's Table 2.

Prompts come from `eval.data.reward`: a JSONL / JSON / parquet file with a `prompt` (or
`instruction`) field, and optionally `id`. A reward model is any checkpoint
`AutoModelForSequenceClassification` loads with one output (`num_labels == 1`; e.g. Skywork,
ArmoRM-style scalar heads); the pair is rendered with the RM tokenizer's chat template when it has
one, else as `prompt\\n\\nresponse`.
"""
from __future__ import annotations

from lco_cli.errors import ConfigError, MissingArtifactError
from lco_cli.evals.benchmarks import Benchmark, load_rows, register
from lco_cli.evals.job import EvalJob, Prompted, data_errors, generate_responses, mean_and_stderr, write_samples

PROMPT_FIELDS = ("prompt", "instruction")


def load_prompts(path: str | None, limit: int | None, benchmark: str) -> list[Prompted]:
    if path is None:
        raise ConfigError(f"eval.data.{benchmark}: required (a file of prompts with a 'prompt' or 'instruction' field)")
    with data_errors(benchmark):
        rows = list(load_rows(path))
    items = []
    for i, row in enumerate(rows[:limit] if limit else rows):
        text = next((row[f] for f in PROMPT_FIELDS if isinstance(row.get(f), str)), None)
        if text is None:
            raise ConfigError(f"eval.data.{benchmark}: {path} row {i} has no 'prompt' or 'instruction' text")
        items.append(Prompted(str(row.get("id", i)), text, dict(row)))
    return items


def load_classifier(ref: str, key: str, kind: str = "sequence"):
    """(model, tokenizer) of a classifier checkpoint, in eval mode; exit 3 naming the path when
    it is not there."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    cls = AutoModelForSequenceClassification if kind == "sequence" else AutoModelForTokenClassification
    try:
        tok = AutoTokenizer.from_pretrained(ref)
        model = cls.from_pretrained(ref)
    except OSError as exc:
        raise MissingArtifactError(f"{key}: cannot load a {kind}-classification model from {ref} ({exc})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:  # sequence heads read the last non-pad token
        model.config.pad_token_id = tok.pad_token_id
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, tok


def pair_text(tokenizer, prompt: str, response: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
    return f"{prompt}\n\n{response}"


def score_texts(model, tokenizer, texts: list[str], batch_size: int, key: str) -> list[float]:
    """The scalar head's output for each text (right padding; the head reads the last real token)."""
    import torch

    if model.config.num_labels != 1:
        raise ConfigError(f"{key}: expected a reward model with one output (num_labels=1), got {model.config.num_labels}")
    tokenizer.padding_side = "right"
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            add_special_tokens=False).to(model.device)
            scores += model(**enc).logits[:, 0].float().tolist()
    return scores


def reward_rows(policy: str, benchmark: str, scores: dict[str, list[float]], n: int) -> list[dict]:
    """`reward/<name>` per model, then `reward/avg`: the mean of the per-model means, its stderr
    from the per-response average over models."""
    rows = []
    for name, vals in scores.items():
        mean, se = mean_and_stderr(vals)
        rows.append({"policy": policy, "benchmark": benchmark, "metric": f"reward/{name}", "mean": mean,
                     "stderr": se, "n_problems": n})
    if len(scores) > 1:
        per_response = [sum(v) / len(v) for v in zip(*scores.values())]
        mean, se = mean_and_stderr(per_response)
        rows.append({"policy": policy, "benchmark": benchmark, "metric": "reward/avg", "mean": mean, "stderr": se,
                     "n_problems": n})
    return rows


class RewardModelBenchmark(Benchmark):
    name = "reward"

    def config_errors(self, eval_cfg) -> list[str]:
        errors = []
        if not eval_cfg.reward_models:
            errors.append("eval.reward_models: the reward benchmark needs at least one {name: path or hub id}")
        if self.name not in eval_cfg.data:
            errors.append(f"eval.data.{self.name}: required by the reward benchmark (a file of prompts)")
        return errors

    def evaluate(self, job: EvalJob) -> list[dict]:
        items = load_prompts(job.data_path, job.settings.limit, self.name)
        outputs = generate_responses(job, self.name, items)
        scores: dict[str, list[float]] = {}
        for name, ref in job.settings.reward_models.items():
            key = f"eval.reward_models.{name}"
            model, tok = load_classifier(ref, key)
            scores[name] = score_texts(model, tok, [pair_text(tok, it.prompt, out) for it, out in zip(items, outputs)],
                                       job.settings.batch_size, key)
            del model
        write_samples(job, self.name, [{"id": it.id, "prompt": it.prompt, "generation": out,
                                        "rewards": {name: vals[i] for name, vals in scores.items()}}
                                       for i, (it, out) in enumerate(zip(items, outputs))])
        return reward_rows(job.policy.name, self.name, scores, len(items))


register(RewardModelBenchmark())
