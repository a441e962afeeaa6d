"""Experiment trackers (`logging.report_to`): every metrics row also goes to TensorBoard and/or
Weights & Biases through accelerate's tracker classes, on the main process only — and so do the
held-out results a stage computes after its last step (`publish`: SFT's `heldout_acc`, the RM's
`heldout_pair_accuracy` / `heldout_reward_margin`), at the final step. Train's `heldout_acc` is in
its metrics rows already (every `train.eval_every` steps, step 0 included)."""
from __future__ import annotations

import os
import re

from lco_cli.errors import ConfigError
from lco_cli.runtime.rundir import StageDir


def _numeric(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def wandb_project(run_name: str) -> str:
    """The W&B project: $WANDB_PROJECT when set (wandb.init's explicit project would override it),
    else the preset name with the characters W&B refuses in project names replaced."""
    return os.environ.get("WANDB_PROJECT") or re.sub(r"[/\\#?%:]", "-", run_name)


def open_trackers(sd: StageDir, report_to: list[str], run_name: str, config: dict) -> list:
    """Start the trackers and route `sd.metrics` rows to them; returns them for `close_trackers`.

    TensorBoard writes event files under `<stage>/tensorboard/`; wandb writes under `<stage>/wandb/`
    (run `<preset>-<stage>` in group `<preset>`) and follows its own environment (WANDB_MODE=offline
    works without a network or key)."""
    trackers = []
    for name in report_to:
        try:
            if name == "tensorboard":
                from accelerate.tracking import TensorBoardTracker

                tracker = TensorBoardTracker(run_name=sd.name, logging_dir=str(sd.path / "tensorboard"))
            else:
                from accelerate.tracking import WandBTracker

                # accelerate passes `run_name` to wandb.init as the project, which may not hold '/'
                tracker = WandBTracker(run_name=wandb_project(run_name), dir=str(sd.path), name=f"{run_name}-{sd.name}",
                                       group=run_name, job_type=sd.name)
            tracker.start()  # accelerate imports the tracker's package here
        except ImportError as exc:
            raise ConfigError(f"logging.report_to: '{name}' needs its package ({exc.name}): pip install {name}") from None
        tracker.store_init_configuration(config)
        trackers.append(tracker)

    def log(row: dict) -> None:
        for tracker in trackers:
            tracker.log(_numeric(row), step=row.get("step"))

    if trackers:
        sd.metrics.on_append.append(log)
    return trackers


def close_trackers(trackers: list) -> None:
    for tracker in trackers:
        tracker.finish()


def publish(sd: StageDir, row: dict) -> None:
    """Send `row` (with its `step`) to the stage's trackers only: a result that is not a metrics.jsonl
    row (it is in the stage's eval.json). Nothing happens without trackers or off the main process."""
    for callback in sd.metrics.on_append:
        callback(row)
