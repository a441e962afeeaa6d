"""The `lco eval` stage: every policy in `eval.policies` on every benchmark in `eval.benchmarks`.

Math benchmarks (arith, math500, amc23, minerva): pass@1 = mean over problems of the fraction of the k samples that are correct; stderr = sample
standard deviation of those per-problem fractions / sqrt(n_problems) (the results.json contract). Every
generation is kept in `eval/samples/<policy>/<benchmark>.jsonl` with its extracted answer and
verdict. A (policy, benchmark) pair that finished is not recomputed when an interrupted eval resumes.

Benchmarks that are not scored pass@1 (alpacaeval, reward, qa_feedback, mmlu, mmlu_redux) implement
`evaluate(job)` and return their own rows (`win_rate`, `lc_win_rate`, `reward/<name>`, `accuracy`);
see docs/evaluations.md.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click
import torch

from lco_cli.runtime import models
from lco_cli.evals.benchmarks import Problem, get_benchmark
from lco_cli.engines.composite import CompositeEngine, pi_star_logits
from lco_cli.engines.generation import encode_prompts, make_engine
from lco_cli.rl.advantage_sources import read_rm_meta, reference_of
from lco_cli.runtime.rundir import atomic_write_json, atomic_write_text
from lco_cli.tasks import get_task
from lco_cli.tasks.vocab import shared_vocab_size, trim_logits
from lco_cli.runtime.training import stage_run
from lco_cli.commands.common import Context
from lco_cli.evals.job import EvalJob, PolicyHandle, data_errors
from lco_cli.evals.partial import Partial, generate_resumable, partial_path, unit_identity
from lco_cli.runtime.stage import stage_config_hash


#: A policy under evaluation (the handle benchmarks receive).
Policy = PolicyHandle


class TaskBenchmark:
    """The configured task's held-out split (`task`; `arith` for the arith task, its historical name):
    prompts rendered by the task, answers judged by its verifier."""

    def __init__(self, name: str, task):
        self.name, self.task = name, task
        self.by_id = {e.id: e for e in task.test}

    def load(self, path=None, limit=None) -> list[Problem]:
        items = self.task.test[:limit] if limit else self.task.test
        return [Problem(e.id, e.prompt, e.answer) for e in items]

    def prompt(self, problem: Problem, tokenizer) -> str:
        return self.task.render(self.by_id[problem.id], tokenizer)

    def check(self, problems, generations, timeout=5.0, workers=None):
        return self.task.check_batch([self.by_id[p.id] for p in problems], list(generations), timeout=timeout)


def benchmark_for(name: str, ctx: Context):
    if name in ("task", "arith"):
        return TaskBenchmark(name, get_task(ctx.preset.task, ctx.preset.seed))
    return get_benchmark(name)


def load_problems(bench, name: str, ctx: Context) -> list[Problem]:
    path = ctx.preset.eval.data.get(name)
    with data_errors(name):
        return bench.load(path=path, limit=ctx.preset.eval.limit)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_policy(name: str, ctx: Context) -> Policy:
    """A stage name, 'base', 'rm' (φ_DPO decoded as a policy), 'pi_star', a path or a hub id."""
    p, cfg = ctx.preset, ctx.preset.eval
    if name == "pi_star":
        return load_pi_star(ctx)
    ref = models.resolve_model_ref(name, ctx.run, p)
    tok = models.load_tokenizer(ref, p.model)
    model = models.load_model(ref, p.model, trainable=False).to(device())
    return Policy(name, make_engine(cfg.engine, model, tok, cfg.batch_size, p.model.vllm, source=ref, key="eval.engine"), tok, ref)


def load_pi_star(ctx: Context) -> Policy:
    """π* = softmax(z_sft + (log φ_DPO − log φ_ref)/β) with β = train.beta (eq. 6)."""
    p = ctx.preset
    sft_dir = models.resolve_model_ref("sft", ctx.run, p)
    rm_dir = models.resolve_model_ref("rm", ctx.run, p)
    ref_dir = reference_of(rm_dir, read_rm_meta(rm_dir))
    tok = models.load_tokenizer(sft_dir, p.model)
    rm_tok = models.load_tokenizer(rm_dir, p.model)
    vocab = shared_vocab_size(tok, rm_tok, sft_dir, rm_dir)  # padded embedding sizes may differ
    loaded = [models.load_model(d, p.model, trainable=False).to(device()) for d in (sft_dir, rm_dir, ref_dir)]
    beta = p.train.beta  # declared in evals.policies.KINDS, so the eval stage's identity includes it
    engine = CompositeEngine(loaded, lambda z: pi_star_logits(*(trim_logits(x, vocab) for x in z[:3]), beta), tok,
                             p.eval.batch_size)
    return Policy("pi_star", engine, tok, None)


def summarize(policy: str, benchmark: str, verdicts: list[list[bool]], k: int) -> dict:
    fractions = [sum(v) / len(v) for v in verdicts]
    n = len(fractions)
    mean = sum(fractions) / n if n else 0.0
    var = sum((f - mean) ** 2 for f in fractions) / (n - 1) if n > 1 else 0.0
    return {"policy": policy, "benchmark": benchmark, "metric": "pass@1", "mean": mean,
            "stderr": math.sqrt(var) / math.sqrt(n) if n else 0.0, "n_problems": n, "k": k}


def evaluate_pair(pol: Policy, bench, name: str, ctx: Context, out_dir: Path, resume: bool) -> list[dict]:
    """The result rows of one policy on one benchmark; written to `<benchmark>.summary.json` last,
    which marks the pair finished for a resumed eval (and makes its partial file useless)."""
    partial = unit_partial(pol, name, ctx, out_dir)
    if hasattr(bench, "evaluate"):
        job = EvalJob(pol, ctx.preset.eval, ctx.preset.eval.data.get(name), out_dir, ctx.run.path, ctx.preset.seed, resume,
                      partial)
        rows = bench.evaluate(job)
    else:
        rows = [evaluate_pass_at_1(pol, bench, name, ctx, out_dir, partial, resume)]
    atomic_write_json(out_dir / f"{name}.summary.json", rows)
    partial.remove()
    return rows


def unit_partial(pol: Policy, name: str, ctx: Context, out_dir: Path) -> Partial:
    """The unit's partial file, tied to the eval stage's identity and this policy and benchmark."""
    identity = unit_identity(stage=stage_config_hash(ctx.preset, "eval"), policy=pol.name, model=pol.model_ref,
                             benchmark=name)
    return Partial(partial_path(out_dir, name), identity, ctx.preset.eval.checkpoint_every_minutes)


def read_summary(path: Path) -> list[dict]:
    """A finished pair's rows (older summaries hold one row, not a list)."""
    rows = json.loads(path.read_text())
    return rows if isinstance(rows, list) else [rows]


def evaluate_pass_at_1(pol: Policy, bench, name: str, ctx: Context, out_dir: Path, partial: Partial, resume: bool) -> dict:
    cfg = ctx.preset.eval
    problems = load_problems(bench, name, ctx)
    prompts = [bench.prompt(pr, pol.tokenizer) for pr in problems]

    def finish(chunk: range, roll) -> list[list[dict]]:
        """The chunk's checked sample rows, per problem (what the partial file keeps)."""
        checks = bench.check([problems[chunk[g]] for g in roll.group], roll.texts, timeout=cfg.verify_timeout)
        rows: list[list[dict]] = [[] for _ in chunk]
        for g, text, trunc, (extracted, ok) in zip(roll.group, roll.texts, roll.truncated, checks):
            pr = problems[chunk[g]]
            rows[g].append({"id": pr.id, "sample": len(rows[g]), "prompt": prompts[chunk[g]], "generation": text,
                            "extracted": extracted, "answer": pr.answer, "correct": bool(ok), "truncated": trunc})
        return rows

    per_problem = generate_resumable(pol.engine, encode_prompts(pol.tokenizer, prompts), cfg.samples, cfg, ctx.preset.seed,
                                     partial, resume, finish)
    verdicts = [[r["correct"] for r in rows] for rows in per_problem]
    atomic_write_text(out_dir / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for rows in per_problem for r in rows))
    return summarize(pol.name, name, verdicts, cfg.samples)


def run_eval(ctx: Context) -> dict:
    cfg = ctx.preset.eval
    for name in cfg.benchmarks:  # a missing judge key or extra ends the eval before any generation
        prepare = getattr(benchmark_for(name, ctx), "preflight", None)
        if prepare is not None:
            prepare(cfg)
    with stage_run(ctx.run, ctx.preset_name, ctx.preset, "eval") as sd:
        benches = {name: benchmark_for(name, ctx) for name in cfg.benchmarks}
        results = []
        for pol_name in cfg.policies:
            out_dir = sd.path / "samples" / _safe(pol_name)
            todo = [b for b in cfg.benchmarks if not (sd.resume and (out_dir / f"{b}.summary.json").exists())]
            for b in cfg.benchmarks:
                if b not in todo:
                    results += read_summary(out_dir / f"{b}.summary.json")
            if not todo:
                continue
            pol = load_policy(pol_name, ctx)
            for b in todo:
                rows = evaluate_pair(pol, benches[b], b, ctx, out_dir, sd.resume)
                results += rows
                for res in rows:
                    click.echo(f"eval: {pol_name:>10s} {b:<8s} {res['metric']} {res['mean']:.3f} ± {res['stderr']:.3f} "
                               f"(n={res['n_problems']})", err=True)
            del pol
        order = {(p, b): i for i, (p, b) in enumerate((p, b) for p in cfg.policies for b in cfg.benchmarks)}
        results.sort(key=lambda r: order.get((r["policy"], r["benchmark"]), 0))  # stable: metric order kept
        payload = {"results": results}
        atomic_write_json(sd.path / "results.json", payload)
        return payload


def _safe(name: str) -> str:
    """A policy given as a path becomes a folder-safe name."""
    return name.strip("/").replace("/", "__") or "policy"
