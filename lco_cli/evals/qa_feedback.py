"""QA-Feedback (`qa_feedback`): Wu et al. (2023)'s fine-grained evaluation, the paper's Table 2.

Follows their released evaluation code, allenai/FineGrainedRLHF,
`tasks/qa_feedback/training/reward.py`: `FineGrainedReward.eval_metrics` and
`FineGrainedReward.aggregate_metrics`, with `SubSentenceVerbosityReward.get_reward` (relevance),
`FactualityReward.get_reward` (factuality), `PreferenceReward.get_reward` (completeness), and the
splitters of `fgrlhf/reward_utils.py` (`split_text_to_sentences`, `split_text_to_subsentences`):

- relevance: the response is split into sub-sentences; the reward model (a 3-class token
  classifier) reads `question: {question} answer: </s> sub_1 </s> sub_2 ...` (words split on
  whitespace, `is_split_into_words`); at each `</s>` the sub-sentence counts as relevant when class
  2 beats class 1. Ratio = relevant / sub-sentences; the corpus value is the ratio weighted by the
  number of sub-sentences (Σ relevant / Σ sub-sentences).
- factuality: the same on sentences, input `{prompt} answer: </s> s_1 </s> s_2 ...`; a sentence is
  factual when class 2 beats class 0; corpus value Σ factual / Σ sentences.
- completeness: a sequence regressor on `{prompt, whitespace-normalised} answer: {response}`;
  the corpus value is the mean of its outputs.
Rows: `reward/relevance`, `reward/factuality`, `reward/completeness` (mean ± stderr of the
per-response values; the means of the first two are the weighted ratios above).

Deviation, stated: their sentence splitter is spaCy's `en_core_web_sm` (a model download); here a
sentence ends at `.`, `!` or `?` followed by whitespace (abbreviations are not special-cased).
The sub-sentence rule on top is theirs: a sentence is cut after a word ending in `, ; ! ?` when
both sides keep at least 5 words (`min_subsent_words=5`, merging a too-short leading piece).
Responses cut by the reward tokenizer's length limit score only the (sub-)sentences whose `</s>`
survived; the others count as not relevant / not factual.

Data: `eval.data.qa_feedback`, the QA-Feedback test split as released (`test.json`: fields
`question`, `prompt`, optional `id`); the policy answers `prompt`.
"""
from __future__ import annotations

import re

from lco_cli.errors import ConfigError
from lco_cli.evals.benchmarks import Benchmark, load_rows, register
from lco_cli.evals.job import EvalJob, Prompted, data_errors, generate_responses, mean_and_stderr, write_samples
from lco_cli.evals.reward_models import load_classifier, score_texts

MIN_SUBSENT_WORDS = 5
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
CLAUSE_END = re.compile(r"[,;!?]$")
FIELDS = ("question", "prompt")
MODELS = ("relevance_model", "factuality_model", "completeness_model")


def sentence_spans(text: str) -> list[str]:
    """Sentences, each keeping its trailing whitespace (their splitter returns end offsets)."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    if not ends or ends[-1] < len(text.rstrip()):
        ends.append(len(text))
    spans, start = [], 0
    for end in ends:
        if text[start:end].strip():
            spans.append(text[start:end].strip())
        start = end
    return spans


def sub_sentence_starts(words: list[str], min_words: int = MIN_SUBSENT_WORDS) -> list[bool]:
    """Whether each word opens a sub-sentence: after a clause-ending word, if the new piece and what
    follows keep `min_words` words; a too-short piece is merged into the next one."""
    starts = [True]
    last_start = 0
    for i in range(1, len(words)):
        if CLAUSE_END.search(words[i - 1]) and i + min_words < len(words):
            if i - last_start < min_words:
                if last_start > 0:  # the previous piece was too short: it joins this one
                    starts[last_start] = False
                    starts.append(True)
                    last_start = i
                else:
                    starts.append(False)
            else:
                starts.append(True)
                last_start = i
        else:
            starts.append(False)
    return starts


def sub_sentences(text: str) -> list[str]:
    pieces = []
    for sentence in sentence_spans(text):
        words = sentence.split()
        current: list[str] = []
        for word, start in zip(words, sub_sentence_starts(words)):
            if start and current:
                pieces.append(" ".join(current))
                current = []
            current.append(word)
        if current:
            pieces.append(" ".join(current))
    return pieces


def marked(prefix: str, pieces: list[str], sep: str) -> str:
    return f"{prefix} answer: " + " ".join(f"{sep} {p}" for p in pieces)


def count_correct(model, tok, inputs: list[str], n_pieces: list[int], classes: tuple[int, int], sep: str,
                  batch_size: int) -> list[int]:
    """Per input, how many `sep` positions predict classes[1] over classes[0]."""
    import torch

    sep_id = tok.convert_tokens_to_ids(sep)
    tok.padding_side = "right"
    counts = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            words = [s.split() for s in inputs[i:i + batch_size]]
            enc = tok(words, is_split_into_words=True, truncation=True, padding=True, return_tensors="pt").to(model.device)
            logits = model(**enc).logits
            for row, ids in enumerate(enc["input_ids"]):
                at_sep = logits[row, ids == sep_id][:, list(classes)]
                counts.append(int((at_sep.argmax(-1) == 1).sum()))
    return [min(c, n) for c, n in zip(counts, n_pieces)]


def weighted_ratio(correct: list[int], totals: list[int]) -> float:
    """Σ correct / Σ pieces, as `aggregate_metrics` weights the per-response ratios."""
    return sum(correct) / sum(totals) if sum(totals) else 0.0


class QAFeedbackBenchmark(Benchmark):
    name = "qa_feedback"

    def config_errors(self, eval_cfg) -> list[str]:
        errors = [f"eval.qa_feedback.{m}: required by the qa_feedback benchmark"
                  for m in MODELS if not getattr(eval_cfg.qa_feedback, m)]
        if self.name not in eval_cfg.data:
            errors.append("eval.data.qa_feedback: required (the QA-Feedback test split, fields question and prompt)")
        return errors

    def load(self, path: str | None = None, limit: int | None = None) -> list[Prompted]:
        if path is None:
            raise ConfigError("eval.data.qa_feedback: required (the QA-Feedback test split, fields question and prompt)")
        rows = list(load_rows(path))
        items = []
        for i, row in enumerate(rows[:limit] if limit else rows):
            for f in FIELDS:
                if not isinstance(row.get(f), str):
                    raise ConfigError(f"eval.data.qa_feedback: {path} row {i} has no text field {f!r}")
            items.append(Prompted(str(row.get("id", i)), row["prompt"], {"question": row["question"]}))
        return items

    def evaluate(self, job: EvalJob) -> list[dict]:
        cfg = job.settings.qa_feedback
        with data_errors(self.name):
            items = self.load(job.data_path, job.settings.limit)
        outputs = generate_responses(job, self.name, items)
        subs = [sub_sentences(o) for o in outputs]
        sents = [sentence_spans(o) for o in outputs]
        model, tok = load_classifier(cfg.relevance_model, "eval.qa_feedback.relevance_model", "token")
        relevant = count_correct(model, tok, [marked(f"question: {it.fields['question']}", s, cfg.sep) for it, s in zip(items, subs)],
                                 [len(s) for s in subs], (1, 2), cfg.sep, cfg.batch_size)
        model, tok = load_classifier(cfg.factuality_model, "eval.qa_feedback.factuality_model", "token")
        factual = count_correct(model, tok, [marked(it.prompt, s, cfg.sep) for it, s in zip(items, sents)],
                                [len(s) for s in sents], (0, 2), cfg.sep, cfg.batch_size)
        model, tok = load_classifier(cfg.completeness_model, "eval.qa_feedback.completeness_model")
        complete = score_texts(model, tok, [f"{' '.join(it.prompt.split())} answer: {o}" for it, o in zip(items, outputs)],
                               cfg.batch_size, "eval.qa_feedback.completeness_model")
        samples = [{"id": it.id, "prompt": it.prompt, "generation": o, "n_sub_sentences": len(s), "n_relevant": r,
                    "n_sentences": len(t), "n_factual": f, "completeness": c}
                   for it, o, s, r, t, f, c in zip(items, outputs, subs, relevant, sents, factual, complete)]
        write_samples(job, self.name, samples)
        return self.rows(job.policy.name, samples)

    def rows(self, policy: str, samples: list[dict]) -> list[dict]:
        def row(metric: str, mean: float, per_response: list[float]) -> dict:
            return {"policy": policy, "benchmark": self.name, "metric": metric, "mean": mean,
                    "stderr": mean_and_stderr(per_response)[1], "n_problems": len(samples)}

        rel = [s["n_relevant"] / s["n_sub_sentences"] if s["n_sub_sentences"] else 0.0 for s in samples]
        fac = [s["n_factual"] / s["n_sentences"] if s["n_sentences"] else 0.0 for s in samples]
        comp = [s["completeness"] for s in samples]
        return [row("reward/relevance", weighted_ratio([s["n_relevant"] for s in samples], [s["n_sub_sentences"] for s in samples]), rel),
                row("reward/factuality", weighted_ratio([s["n_factual"] for s in samples], [s["n_sentences"] for s in samples]), fac),
                row("reward/completeness", mean_and_stderr(comp)[0], comp)]


register(QAFeedbackBenchmark())
