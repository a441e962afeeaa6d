"""`tiny-math`: a CPU stand-in of the real math path (docs/tasks.md).

Two parts, both built locally and deterministically (no download):

* `generate_rows()` -- synthetic MATH-schema problems (`problem`, `solution` ending in a
  `\\boxed{}` LaTeX answer such as `\\frac{1}{2}`, `level`, `type`, `unique_id`): fraction sums,
  equations `ax = b`, small integer sums and differences. Generated, not benchmark items. A preset
  selects them with `task.source: tiny-math` (they are made in memory; `write_jsonl` saves them as JSONL).
* `build_tiny_math(spec, seed, out_dir)` -- a small Qwen2-architecture model with a byte-level BPE
  tokenizer trained with `tokenizers` on those problems, a Qwen-style chat template
  (`<|im_start|>` ... `<|im_end|>`, EOS = `<|im_end|>`) and embedding rows padded past the
  tokenizer's size the way Qwen2.5 checkpoints are (151,936 rows for 151,665 tokens), saved as an
  ordinary HF folder. `model.policy: tiny-math` resolves to it through `runtime.models.resolve_model_ref`.
"""
from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

from lco_cli.errors import ConfigError
from lco_cli.evals.benchmarks import COT_INSTRUCTION
from lco_cli.runtime.builds import build_once, seeded_qwen2

SOURCE = "tiny-math"  # the task.source / model.policy name
N_ROWS = 1200
#: The longest generated solution is ~40 tokens; 128 leaves room (validate warns below a quarter).
MAX_NEW_TOKENS = 128
ARCH_DEFAULTS = {"hidden": 96, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 384, "positions": 512,
                 "vocab": 450, "pad_to": 64}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# --------------------------------------------------------------------------- data


def latex(q: Fraction) -> str:
    """1/2 -> \\frac{1}{2}, -3/4 -> -\\frac{3}{4}, 5 -> 5 (MATH's answer style)."""
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


# Problem families small enough for a ~0.3M-parameter model to learn in a few CPU minutes, with
# answers written as MATH writes them (integers, negative numbers, \frac{}{} in lowest terms).


def fraction_sums() -> list[tuple[str, str]]:
    out = []
    for d in range(2, 13):
        for a in range(1, d):
            for b in range(1, d):
                problem = f"What is $\\frac{{{a}}}{{{d}}} + \\frac{{{b}}}{{{d}}}$? Express your answer in lowest terms."
                solution = (f"Add the numerators: $\\frac{{{a} + {b}}}{{{d}}} = \\frac{{{a + b}}}{{{d}}}$, "
                            f"which is $\\boxed{{{latex(Fraction(a + b, d))}}}$.")
                out.append((problem, solution))
    return out


def linear_equations() -> list[tuple[str, str]]:
    return [(f"Solve for $x$: ${a}x = {b}$.",
             f"Divide both sides by {a}: $x = \\frac{{{b}}}{{{a}}} = \\boxed{{{latex(Fraction(b, a))}}}$.")
            for a in range(2, 10) for b in range(1, 31)]


def integer_expressions() -> list[tuple[str, str]]:
    return [(f"Compute ${a} {op} {b}$.", f"We have ${a} {op} {b} = \\boxed{{{a + b if op == '+' else a - b}}}$.")
            for a in range(20) for b in range(20) for op in "+-"]


KINDS = {"Prealgebra": fraction_sums, "Algebra": linear_equations, "Arithmetic": integer_expressions}


def generate_rows(n: int = N_ROWS, seed: int = 0) -> list[dict]:
    """`n` of the 1,546 distinct problems (seeded choice and order), the same for the same (n, seed)."""
    pool = [(kind, problem, solution) for kind in sorted(KINDS) for problem, solution in KINDS[kind]()]
    if n > len(pool):
        raise ValueError(f"tiny-math: only {len(pool)} distinct problems, fewer than the {n} asked for")
    random.Random(f"tiny-math-{seed}").shuffle(pool)
    return [{"problem": problem, "solution": solution, "level": "Level 1", "type": kind, "unique_id": f"tiny-math/{i}"}
            for i, (kind, problem, solution) in enumerate(pool[:n])]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- model


def parse_spec(spec: str) -> dict | None:
    """'tiny-math' or 'tiny-math:hidden=32,layers=1' -> architecture dict; None for other refs."""
    if spec != SOURCE and not spec.startswith(SOURCE + ":"):
        return None
    arch = dict(ARCH_DEFAULTS)
    for part in filter(None, spec.partition(":")[2].split(",")):
        key, _, val = part.partition("=")
        if key not in ARCH_DEFAULTS or not val.isdigit() or int(val) <= 0:
            raise ConfigError(f"model.policy: bad tiny-math spec '{part}' (keys: {', '.join(ARCH_DEFAULTS)}, positive ints)")
        arch[key] = int(val)
    if arch["hidden"] % arch["heads"] or arch["heads"] % arch["kv_heads"]:
        raise ConfigError("model.policy: tiny-math spec needs hidden % heads == 0 and heads % kv_heads == 0")
    return arch


def corpus(rows: list[dict]) -> list[str]:
    """What the tokenizer learns from: the chat-formatted prompts and the solutions."""
    return [f"<|im_start|>user\n{r['problem']}\n{COT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n{r['solution']}<|im_end|>\n"
            for r in rows]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (any UTF-8 text encodes) with the Qwen chat specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny_math(spec: str, seed: int, out_dir: Path) -> Path:
    """Build (once, under a file lock, atomically) the tiny-math model + tokenizer + data into `out_dir`."""
    arch = parse_spec(spec)
    if arch is None:
        raise ValueError(f"not a tiny-math spec: {spec}")
    rows = generate_rows()

    def make():
        tok = train_tokenizer(corpus(rows), arch["vocab"])
        rows_in_embedding = -(-len(tok) // arch["pad_to"]) * arch["pad_to"]  # padded like Qwen checkpoints
        return seeded_qwen2(arch, rows_in_embedding, seed, tok, bos_token_id=None), tok

    def data(folder: Path) -> None:
        write_jsonl(rows, folder / "tiny_math_train.jsonl")  # the data the tokenizer was trained on

    wanted = {"spec": spec, "seed": seed, "arch": arch, "rows": N_ROWS}
    return build_once(Path(out_dir), "lco_tiny_math.json", wanted, make, data)


def resolve_spec(ref: str, seed: int, out_dir: Path) -> str | None:
    """The built folder for a tiny-math spec (building it on first use), else None: the hook
    `runtime.models.resolve_model_ref` calls."""
    return str(build_tiny_math(ref, seed, out_dir)) if parse_spec(ref) is not None else None
