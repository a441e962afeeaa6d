"""What a user looks at after a run (issue 20 §7), on one finished run of the fast preset:

- `lco run` ends with a per-stage summary (key result, time, folder) and the next command;
- `lco report` writes report.md as tables (stages, evaluation ± stderr, curves as first / last / best,
  configuration), not JSON dumps; every plot has a title, axis labels and (bars) values; a curve
  logged at fewer than 3 steps is a table, not a degenerate plot;
- trackers get the held-out accuracies;
- a rerun after an early Ctrl-C says it restarts, one after a checkpoint from which step it resumes."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml
from click.testing import CliRunner

from conftest import FAST, invoke, read_jsonl, write_pairs

RM_FILE = ["rm.pairs.source=file", "rm.pairs.path=pairs.jsonl"]
# The RM logs 2 steps only: a curve too short to draw.
RUN = ["run", "fast.yaml", "--run-dir", "run", *RM_FILE, "rm.max_steps=2", "logging.report_to=[tensorboard]"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One `lco run` of the fast preset (TensorBoard on, RM of 2 steps), shared by the module."""
    root = tmp_path_factory.mktemp("summary")
    (root / "fast.yaml").write_text(yaml.safe_dump(FAST))
    write_pairs(root / "pairs.jsonl")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        res = invoke(CliRunner(), *RUN)
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    return root, res


@pytest.fixture
def copy_run(finished, workdir):
    root, _ = finished
    for name in ("run", "fast.yaml", "pairs.jsonl"):
        (shutil.copytree if (root / name).is_dir() else shutil.copy)(root / name, workdir / name)
    return workdir / "run"


def summary_row(stdout: str, stage: str) -> str:
    table = stdout[stdout.index("run summary:"):]  # after the results table, whose rows start alike
    [line] = [ln for ln in table.splitlines() if ln.startswith(f"│ {stage} ")]
    return line


def test_run_ends_with_a_stage_summary_and_the_next_command(finished):
    root, res = finished
    run = root / "run"
    sft = json.loads((run / "sft/eval.json").read_text())
    rm = json.loads((run / "rm/eval.json").read_text())
    out = res.stdout
    assert "run summary: run" in out
    assert f"held-out greedy accuracy {100 * sft['heldout_acc']:.1f} % ({sft['n_problems']} problems)" in summary_row(out, "sft")
    assert f"held-out pair accuracy {100 * rm['pair_accuracy']:.1f} % ({rm['n_pairs']} pairs)" in summary_row(out, "rm")
    held = [r["heldout_acc"] for r in read_jsonl(run / "train/metrics.jsonl") if "heldout_acc" in r]
    assert f"held-out accuracy {100 * held[0]:.1f} % (step 0) → {100 * held[-1]:.1f} % (step 3)" in summary_row(out, "train")
    assert "arith pass@1 (%): sft 0.0 ± 0.0, train 0.0 ± 0.0" in summary_row(out, "eval")
    for stage in ("sft", "rm", "train", "eval"):
        row = summary_row(out, stage)
        assert f"run/{stage}" in row and " s │" in row and "│ done " in row, row  # folder, time, state
        assert isinstance(json.loads((run / stage / "status.json").read_text())["seconds"], float)
    assert out.index("next:") > out.index("│ eval ")
    assert "  lco report run\n" in out


def test_a_rerun_shows_the_recorded_numbers_of_skipped_stages(finished, copy_run, runner):
    _, first = finished
    res = invoke(runner, *RUN)
    assert res.exit_code == 0, res.output
    for stage in ("sft", "rm", "train", "eval"):
        before, after = summary_row(first.stdout, stage), summary_row(res.stdout, stage)
        assert "done (skipped)" in after
        assert after.split("│")[3] == before.split("│")[3]  # the key result, read back from the stage folder
        assert after.split("│")[4].strip() == before.split("│")[4].strip() != "–"  # its time, from status.json
    res = invoke(runner, *RUN, "--json")
    data = json.loads(res.stdout)
    rows = {r["stage"]: r for r in data["summary"]}
    assert rows["sft"]["value"] == json.loads((copy_run / "sft/eval.json").read_text())["heldout_acc"]
    assert rows["rm"]["folder"] == "run/rm" and rows["rm"]["action"] == "skip"
    assert data["next"][0] == {"command": "lco report run", "why": "tables, plots and report.md in run/report"}


def test_next_command_retrains_when_rl_made_the_policy_worse(copy_run, runner):
    path = copy_run / "eval/results.json"
    data = json.loads(path.read_text())
    for r, mean in zip(data["results"], (0.40, 0.20)):  # sft 40 ± 3 %, train 20 ± 3 %: 4.7 combined errors worse
        r.update(mean=mean, stderr=0.03)
    path.write_text(json.dumps(data))
    res = invoke(runner, *RUN)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "lco run fast.yaml --run-dir run rm.pairs.source=file rm.pairs.path=pairs.jsonl rm.max_steps=2 " \
           "'logging.report_to=[tensorboard]' --force train train.lr=0.000333" in out
    assert "RL made the policy worse than SFT on arith (pass@1 20.0 vs 40.0 %, 4.7 standard errors)" in out


def test_stages_left_out_are_suggested_next(copy_run, runner):
    shutil.rmtree(copy_run / "train")
    shutil.rmtree(copy_run / "eval")
    res = invoke(runner, *RUN, "--stages", "sft,rm")
    assert res.exit_code == 0, res.output
    assert "│ not run " in summary_row(res.stdout, "train") and "│ not run " in summary_row(res.stdout, "eval")
    assert ("lco run fast.yaml --run-dir run rm.pairs.source=file rm.pairs.path=pairs.jsonl rm.max_steps=2 "
            "'logging.report_to=[tensorboard]'\n      runs what is not done yet (train, eval)") in res.stdout


def test_trackers_get_the_heldout_accuracies(finished):
    """TensorBoard holds SFT's held-out accuracy and the RM's held-out pair accuracy at the final
    step (the numbers of their eval.json), and train's held-out accuracy at every evaluated step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = finished[0] / "run"

    def scalars(stage, tag):
        events = EventAccumulator(str(run / stage / "tensorboard" / stage))
        events.Reload()
        return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]

    sft = json.loads((run / "sft/eval.json").read_text())
    assert scalars("sft", "heldout_acc") == [(FAST["sft"]["max_steps"], round(sft["heldout_acc"], 6))]
    rm = json.loads((run / "rm/eval.json").read_text())
    assert scalars("rm", "heldout_pair_accuracy") == [(2, round(rm["pair_accuracy"], 6))]
    assert scalars("rm", "heldout_reward_margin") == [(2, round(rm["reward_margin"], 6))]
    train = [(r["step"], round(r["heldout_acc"], 6)) for r in read_jsonl(run / "train/metrics.jsonl") if "heldout_acc" in r]
    assert scalars("train", "heldout_acc") == train and [s for s, _ in train] == [0, 2, 3]


def test_restart_before_the_first_checkpoint_and_resume_after_it(copy_run, runner, monkeypatch):
    """Ctrl-C at train step 1 (checkpoints every 2 steps): the rerun says it restarts; Ctrl-C again at
    step 3: the next rerun resumes, from the checkpoint at step 2."""
    shutil.rmtree(copy_run / "train")
    shutil.rmtree(copy_run / "eval")
    args = [*RUN, "train.steps=4", "train.checkpoint_every=2", "--stages", "train"]
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "1")
    res = invoke(runner, *args)
    assert res.exit_code == 130 and "stopped before its first checkpoint" in res.stderr
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "3")
    res = invoke(runner, *args)
    assert res.exit_code == 130, res.output
    assert "run: train (restart: restart from step 0: it stopped before its first checkpoint)" in res.stderr
    assert "resume" not in res.stderr.split("run: train", 1)[1].splitlines()[0]
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    res = invoke(runner, *args, "--json")
    assert res.exit_code == 0, res.output
    assert "run: train (resume: resume from its checkpoint at step 2 (step-000002))" in res.stderr
    data = json.loads(res.stdout)
    assert data["stages"] == {"train": "resume"}
    [train] = [r for r in data["summary"] if r["stage"] == "train"]
    assert train["state"] == "done" and train["action"] == "resume"
    assert [r["step"] for r in read_jsonl(copy_run / "train/metrics.jsonl") if r["step"] > 0] == [1, 2, 3, 4]


# --------------------------------------------------------------------------- lco report


@pytest.fixture
def drawn(monkeypatch):
    """Every text of every figure `lco report` saves (titles, axis labels, bar labels), by file name."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    texts: dict[str, list[str]] = {}
    save = Figure.savefig

    def spy(fig, fname, *args, **kwargs):
        texts[os.path.basename(str(fname))] = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
        return save(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return texts


def test_report_md_is_tables_not_json(copy_run, runner):
    res = invoke(runner, "report", "run")
    assert res.exit_code == 0, res.output
    md = (copy_run / "report/report.md").read_text()
    assert "```" not in md and '{"' not in md  # no JSON dumps
    sft = json.loads((copy_run / "sft/eval.json").read_text())
    rm = json.loads((copy_run / "rm/eval.json").read_text())
    assert "| stage | status | key result | time | folder |" in md
    assert f"| sft | done | held-out greedy accuracy {100 * sft['heldout_acc']:.1f} % ({sft['n_problems']} problems) |" in md
    assert f"| rm | done | held-out pair accuracy {100 * rm['pair_accuracy']:.1f} % ({rm['n_pairs']} pairs)" in md
    assert "pass@1 (%), mean ± stderr\n\n| policy | arith |\n|---|---:|\n| sft | 0.0 ± 0.0 |\n| train | 0.0 ± 0.0 |" in md
    held = [(r["step"], r["heldout_acc"]) for r in read_jsonl(copy_run / "train/metrics.jsonl") if "heldout_acc" in r]
    best = max(held, key=lambda p: p[1])
    assert (f"| heldout_acc | {len(held)} | {100 * held[0][1]:.1f} % (step 0) | {100 * held[-1][1]:.1f} % (step 3) | "
            f"{100 * best[1]:.1f} % (step {best[0]}), max |") in md
    assert "| train | init_from = sft; algo = lco; objective = kld; advantage = dpo; reward = verifier; beta = 1.0; " \
           "lr = 0.001; steps = 3" in md


def test_plots_have_titles_axis_labels_and_values(copy_run, runner, drawn):
    path = copy_run / "eval/results.json"
    data = json.loads(path.read_text())
    for r, (mean, err) in zip(data["results"], ((0.274, 0.021), (0.208, 0.019))):
        r.update(mean=mean, stderr=err)
    path.write_text(json.dumps(data))
    res = invoke(runner, "report", "run")
    assert res.exit_code == 0, res.output
    bars = drawn["eval.png"]
    assert {"evaluation (run)", "benchmark", "pass@1 (%)", "27.4\n±2.1", "20.8\n±1.9"} <= set(bars), bars
    assert any("mean ± stderr" in t for t in bars)
    for name in ("sft_curves.png", "train_curves.png"):
        texts = drawn[name]
        assert f"{name.split('_')[0]} curves (run)" in texts and "step" in texts, texts
    assert {"loss", "grad_norm"} <= set(drawn["sft_curves.png"])  # panel titles / y labels
    assert (copy_run / "report/eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_curve_of_two_points_is_a_table_not_a_plot(copy_run, runner, drawn):
    (copy_run / "report").mkdir()
    (copy_run / "report/rm_curves.png").write_bytes(b"stale")  # from an earlier report: must not linger
    res = invoke(runner, "report", "run")
    assert res.exit_code == 0, res.output
    assert "rm_curves.png" not in drawn and not (copy_run / "report/rm_curves.png").exists()
    md = (copy_run / "report/report.md").read_text()
    rows = read_jsonl(copy_run / "rm/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    section = md[md.index("## rm"):md.index("## train")]
    assert "![rm curves]" not in section
    assert "Logged at fewer than 3 steps, so not drawn: loss, accuracy, reward_margin." in section
    assert "| step | loss | accuracy | reward_margin |" in section
    assert f"| 2 | {rows[1]['loss']:.4g} | {100 * rows[1]['accuracy']:.1f} % | {rows[1]['reward_margin']:.4g} |" in section
    assert "![sft curves](sft_curves.png)" in md and "sft_curves.png" in drawn
