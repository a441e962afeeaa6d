"""AlpacaEval 2.0 (`alpacaeval`): win rate and length-controlled win rate against the reference
outputs, judged by an OpenAI-compatible chat endpoint (paper Table 3: GPT-4o judge,
GPT-4-1106-preview reference).

Protocol, from the `alpaca-eval` package (extra `lco[alpaca]`), whose files and functions are used
as they are:
- data: `tatsu-lab/alpaca_eval`, file `alpaca_eval_gpt4_baseline.json` (805 instructions with the
  GPT-4-1106-preview outputs: fields `instruction`, `output`, `generator`), or a local file with
  those fields (`eval.data.alpacaeval`);
- annotator `weighted_alpaca_eval_gpt4_turbo`: its prompt template
  (`alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt`), one token answered (`max_tokens: 1`,
  `temperature: 1`, `logprobs`, `top_logprobs: 5`), preference = 2 − P(first output) from the
  log-probabilities of the identifiers `m` / `M` (`completion_parsers.logprob_parser`); the two
  outputs are presented in a random order per instruction (here a hash of the instruction id, so
  the order and the cache key are stable across runs) and the preference mapped back;
- WR: `alpaca_eval.metrics.get_winrate` (mean of preference − 1, ×100; its standard error);
- LC-WR: the `length_controlled_v1` GLM of `alpaca_eval.metrics.glm_winrate`
  (`get_length_controlled_winrate`): preference ~ tanh(std Δlen) + instruction difficulty +
  not-gamed-baseline, regularised toward the gamed baselines of `df_gamed.csv`, then predicted at
  Δlen = 0. The featurisation is written here so that `df_gamed.csv` can come from a local file
  (`eval.judge.lc_data`); the design matrix and the fit are the package's
  (`make_dmatrix_for_model`, `fit_LogisticRegressionCV`). tests/test_evals_alpacaeval.py checks
  that it agrees with `get_length_controlled_winrate` on a fixture.
Rows: `win_rate` and `lc_win_rate` as fractions (shown ×100 by `lco compare`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

from lco_cli.errors import ConfigError, MissingArtifactError
from lco_cli.evals.benchmarks import Benchmark, load_rows, register
from lco_cli.evals.job import EvalJob, Prompted, data_errors, generate_responses, write_samples
from lco_cli.evals.judge import CACHE_FILE, JudgeClient, JudgeError, JudgmentCache, judge_all, read_api_key

HUB_ID = "tatsu-lab/alpaca_eval"
HUB_FILE = "alpaca_eval_gpt4_baseline.json"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
GLM_NAME = "length_controlled_v1"
FIELDS = ("instruction", "output")


def require_package() -> None:
    if importlib.util.find_spec("alpaca_eval") is None:
        raise ConfigError("eval.benchmarks: alpacaeval needs the optional extra (pip install 'lco[alpaca]')")


def annotator_config() -> dict:
    """The annotator's settings and prompt template, read from the installed package."""
    import yaml
    from alpaca_eval import constants

    root = Path(constants.EVALUATORS_CONFIG_DIR)
    cfg = yaml.safe_load((root / ANNOTATOR / "configs.yaml").read_text())[ANNOTATOR]
    cfg["template"] = (root / cfg["prompt_template"]).read_text()
    return cfg


def judge_request(template: str, instruction: str, first: str, second: str, completion_kwargs: dict) -> dict:
    """The chat-completions body for one pair (`first` is identifier `m`, `second` is `M`)."""
    from alpaca_eval.utils import prompt_to_chatml

    # the template's own placeholders are filled one by one: str.format would trip on its braces
    prompt = template.replace("{instruction}", instruction).replace("{output_1}", first).replace("{output_2}", second)
    kw = {k: v for k, v in completion_kwargs.items() if k != "model_name"}
    return {"messages": prompt_to_chatml(prompt), **kw}


def policy_first(item_id: str) -> bool:
    """Presentation order of a pair: the policy's output first for about half the instructions."""
    return int(hashlib.sha256(item_id.encode()).hexdigest(), 16) % 2 == 1


def preference(answer: dict, parser_kwargs: dict, policy_is_first: bool) -> float:
    """1 = the reference is better, 2 = the policy is, in between by the judge's probabilities;
    NaN when the judge's top log-probabilities hold neither identifier."""
    from alpaca_eval.completion_parsers import logprob_parser

    choice = (answer.get("choices") or [{}])[0]
    if not (choice.get("logprobs") or {}).get("content"):
        return float("nan")
    pref = float(logprob_parser(choice, **parser_kwargs)[0])  # 2 - P(first presented output)
    return 3.0 - pref if policy_is_first else pref


def read_gamed(source: str):
    """df_gamed.csv (instruction difficulty and the gamed baselines' annotations)."""
    import pandas as pd

    path = Path(source)
    if not path.exists():
        if path.suffix == ".csv" or source.startswith((".", "/")):
            raise MissingArtifactError(f"eval.judge.lc_data: file not found: {source}")
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id=source, filename="df_gamed.csv", repo_type="dataset"))
    return pd.read_csv(path)


def length_controlled_win_rate(prefs: list[float], reference: list[str], outputs: list[str], indices: list[int],
                               gamed) -> tuple[float, float]:
    """(LC-WR, its standard error), both in percent, as `get_length_controlled_winrate` computes them."""
    import numpy as np
    import pandas as pd
    from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model

    info = GLM_INFO[GLM_NAME]
    gamed = gamed.drop(columns=["model"])
    difficulty = gamed.drop_duplicates("index").set_index("index")["instruction_difficulty"]
    delta = pd.Series([len(r) - len(o) for r, o in zip(reference, outputs)], dtype=float)
    df = pd.DataFrame({"preference": pd.Series(prefs, dtype=float).replace({0.0: 1.5}) - 1, "index": indices})
    df["std_delta_len"] = delta / delta.std()
    unknown = sorted(set(indices) - set(difficulty.index))
    if unknown:
        raise ConfigError(f"eval.judge.lc_data: no instruction difficulty for AlpacaEval index {unknown[0]} "
                          "(the `index` of an instruction must be its position among the 805)")
    if len(indices) < 2:
        raise ConfigError("eval.limit: the length-controlled win rate needs at least 2 judged instructions")
    df["instruction_difficulty"] = [difficulty[i] for i in indices]
    df["not_gamed_baseline"] = True
    test = df[["instruction_difficulty", "not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0
    both = pd.concat([gamed, df], axis=0)
    train, x_test = make_dmatrix_for_model(both, test, formula=info["formula"])
    lam = info["regularize_to_baseline_lambda"]
    weight = both["not_gamed_baseline"].astype(float) + (lam * ~both["not_gamed_baseline"].astype(bool)).astype(float) / 2
    keep = train["preference"].notna()
    model = fit_LogisticRegressionCV(train[keep], "preference", is_ytrue_proba=True, sample_weight=weight[keep],
                                     **info["kwargs"])
    predicted = model.predict_proba(x_test)[:, 1]
    return float(np.mean(predicted) * 100), float(pd.Series(predicted).sem() * 100)


class AlpacaEvalBenchmark(Benchmark):
    name = "alpacaeval"

    def config_errors(self, eval_cfg) -> list[str]:
        try:
            require_package()
        except ConfigError as exc:
            return [exc.message]
        return []

    def preflight(self, eval_cfg) -> None:
        """Before any generation: the extra is installed and the key variable is set (exit 2)."""
        require_package()
        read_api_key(eval_cfg.judge.api_key_env)

    def load(self, path: str | None = None, limit: int | None = None) -> list[Prompted]:
        if path is None:
            from huggingface_hub import hf_hub_download

            rows = json.loads(Path(hf_hub_download(repo_id=HUB_ID, filename=HUB_FILE, repo_type="dataset")).read_text())
            source = f"{HUB_ID}/{HUB_FILE}"
        else:
            rows, source = list(load_rows(path)), str(path)
        items = []
        for i, row in enumerate(rows[:limit] if limit else rows):
            for f in FIELDS:
                if not isinstance(row.get(f), str):
                    raise ValueError(f"{source}: row {i} has no text field {f!r} (AlpacaEval fields: instruction, output)")
            index = int(row.get("index", i))
            items.append(Prompted(str(index), row["instruction"], {"reference": row["output"], "index": index,
                                                                   "generator": row.get("generator", "reference")}))
        return items

    def evaluate(self, job: EvalJob) -> list[dict]:
        cfg = job.settings.judge
        with data_errors(self.name):
            items = self.load(job.data_path, job.settings.limit)
        outputs = generate_responses(job, self.name, items)
        annot = annotator_config()
        client = JudgeClient(cfg.base_url, cfg.model, read_api_key(cfg.api_key_env), cfg.timeout, cfg.max_retries, cfg.backoff)
        order = [policy_first(it.id) for it in items]
        requests = [judge_request(annot["template"], it.prompt, *((out, it.fields["reference"]) if first
                                                                  else (it.fields["reference"], out)),
                                  annot["completions_kwargs"]) for it, out, first in zip(items, outputs, order)]
        answers = judge_all(client, JudgmentCache(job.run_dir / CACHE_FILE), requests, cfg.concurrency)
        prefs = [preference(a, annot["completion_parser_kwargs"], first) for a, first in zip(answers, order)]
        write_samples(job, self.name, [
            {"id": it.id, "instruction": it.prompt, "generation": out, "reference": it.fields["reference"],
             "policy_first": first, "preference": None if math.isnan(p) else p}
            for it, out, first, p in zip(items, outputs, order, prefs)])
        return self.summarize(job, items, outputs, prefs)

    def summarize(self, job: EvalJob, items: list[Prompted], outputs: list[str], prefs: list[float]) -> list[dict]:
        from alpaca_eval.metrics import get_winrate

        judged = [(it, out, p) for it, out, p in zip(items, outputs, prefs) if not math.isnan(p)]
        if not judged:
            raise JudgeError("alpacaeval: the judge answered no pair with log-probabilities for m / M "
                             f"(check that {job.settings.judge.base_url} supports logprobs)")
        wr = get_winrate([{"preference": p} for _, _, p in judged])
        lc, lc_se = length_controlled_win_rate([p for *_, p in judged], [it.fields["reference"] for it, _, _ in judged],
                                               [out for _, out, _ in judged], [it.fields["index"] for it, _, _ in judged],
                                               read_gamed(job.settings.judge.lc_data))
        common = {"policy": job.policy.name, "benchmark": self.name, "n_problems": len(judged),
                  "n_unjudged": len(items) - len(judged), "judge": job.settings.judge.model, "annotator": ANNOTATOR,
                  "reference": items[0].fields["generator"]}
        return [{**common, "metric": "win_rate", "mean": float(wr["win_rate"]) / 100,
                 "stderr": float(wr["standard_error"]) / 100},
                {**common, "metric": "lc_win_rate", "mean": lc / 100, "stderr": lc_se / 100, "glm": GLM_NAME}]


register(AlpacaEvalBenchmark())
