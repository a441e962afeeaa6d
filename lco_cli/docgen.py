"""Generate docs/presets.md from the config dataclasses: `python -m lco_cli.docgen > docs/presets.md`."""
from __future__ import annotations

from lco_cli.config import Preset, field_docs


def presets_markdown() -> str:
    lines = [
        "# Preset reference",
        "",
        "Generated from `lco_cli/config.py` (`python -m lco_cli.docgen > docs/presets.md`); a test keeps it current.",
        "Every key below can be set in a preset YAML or overridden on the command line as `KEY=VALUE`",
        "(dotted keys, YAML scalar values, flow lists such as `eval.policies=[sft,train]`). Unknown keys are errors.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, tp, default, doc in field_docs(Preset):
        if tp == "section":
            lines.append(f"| **`{key}`** | section | | {doc} |")
        else:
            lines.append(f"| `{key}` | {tp} | `{default}` | {doc.replace('|', '/')} |")
    lines += ["", _ALGO_ARGS, _algo_table(), ""]
    return "\n".join(lines)


_ALGO_ARGS = """## `train.algo_args`

Knobs of the chosen baseline (`train.algo` other than `lco`), validated against that algorithm's own
`Config` dataclass in `lco_cli/losses/configs.py`; defaults follow the original papers and TRL.
"""


def _algo_table() -> str:
    import dataclasses

    from lco_cli.rl.registry import algorithms

    out = []
    for name, spec in algorithms().items():
        cfg = spec.algo_args_class()
        if cfg is None:
            continue
        fields = ", ".join(f"`{f.name}`={f.default!r}" for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING)
        out.append(f"- `{name}`: {fields}")
    return "\n".join(out)


def main() -> None:
    print(presets_markdown(), end="")


if __name__ == "__main__":
    main()
