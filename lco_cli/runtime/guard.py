"""The collapse guard (`train.guard.*`): stop a run whose policy has collapsed instead of marking it done.

Three symptoms, each conservative by default so that a healthy run is never stopped:

* dead gradients: the gradient norm is exactly 0 (or non-finite) for `patience` consecutive steps — the
  weights have blown up into saturated activations (train.lr=1e6 on a 1-layer model) or every token's
  gradient vanished;
* uniform outputs: the mean token entropy reaches `uniform_entropy` × ln|V| for `patience` consecutive
  steps, when the run started below it (a random-init policy starts near uniform and is not a collapse);
* held-out accuracy: it falls below `heldout_fraction` × its step-0 value, and by more than `heldout_sigmas`
  standard errors of the difference of two binomial proportions (so the noise of a small held-out set does
  not stop a run).

A stop raises `CollapseError` (exit 1): the stage is marked failed, not done, and the message names the
step, the symptom, the newest checkpoint saved before the symptom began, and the gradient-gap gauge when it
was measured (`train.telemetry.gradient_gap`).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from lco_cli.errors import StageFailedError


class CollapseError(StageFailedError):
    """The policy collapsed (exit 1; the stage is marked failed)."""


def last_checkpoint_at_or_before(checkpoints_dir: Path, step: int) -> Path | None:
    """The newest `step-NNNNNN` checkpoint folder at or before `step` (None when there is none)."""
    if not checkpoints_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in checkpoints_dir.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name))]
    found = [(s, p) for s, p in found if s <= step]
    return max(found)[1] if found else None


class CollapseGuard:
    """Watches each step's metrics row; `check` returns a symptom (text) and the last healthy step, or None."""

    def __init__(self, cfg, vocab_size: int | None, heldout0: float | None = None, heldout_n: int = 0):
        self.cfg = cfg  # train.guard
        self.log_v = math.log(vocab_size) if vocab_size and vocab_size > 1 else None
        self.heldout0, self.heldout_n = heldout0, heldout_n
        self.dead = 0
        self.uniform = 0
        self.started_uniform: bool | None = None
        self.healthy_step = 0  # the last step at which no symptom was seen
        self.last_heldout_ok = 0

    def set_heldout0(self, acc: float, n: int) -> None:
        self.heldout0, self.heldout_n = acc, n

    def check(self, row: dict) -> str | None:
        if not self.cfg.enabled:
            return None
        step = row["step"]
        symptom = self._dead(row) or self._uniform(row) or self._heldout(row)
        if symptom is None and not self.dead and not self.uniform:
            self.healthy_step = step
        return symptom

    def _dead(self, row: dict) -> str | None:
        g = row.get("grad_norm")
        if g is None or row.get("update_skipped"):  # no update this step (DAPO: nothing to learn from)
            return None
        dead = not math.isfinite(g) or g == 0.0
        self.dead = self.dead + 1 if dead else 0
        if self.dead >= self.cfg.patience:
            return f"the gradient norm was exactly 0 or non-finite for {self.dead} consecutive steps"
        return None

    def _uniform(self, row: dict) -> str | None:
        ent = row.get("entropy")
        if ent is None or self.log_v is None or not math.isfinite(ent):
            return None
        at_uniform = ent >= self.cfg.uniform_entropy * self.log_v
        if self.started_uniform is None:
            self.started_uniform = at_uniform
        if self.started_uniform:
            return None
        self.uniform = self.uniform + 1 if at_uniform else 0
        if self.uniform >= self.cfg.patience:
            return (f"the policy is uniform: mean token entropy {ent:.3f} nats ≥ {self.cfg.uniform_entropy:g} × ln|V| "
                    f"= {self.cfg.uniform_entropy * self.log_v:.3f} for {self.uniform} consecutive steps")
        return None

    def _heldout(self, row: dict) -> str | None:
        acc, acc0, n = row.get("heldout_acc"), self.heldout0, self.heldout_n
        if acc is None or acc0 is None or acc0 <= 0 or n <= 0:
            return None
        se = math.sqrt((acc0 * (1 - acc0) + acc * (1 - acc)) / n)
        fell = acc < self.cfg.heldout_fraction * acc0 and acc0 - acc > self.cfg.heldout_sigmas * se
        if not fell:
            self.last_heldout_ok = row["step"]
            return None
        return (f"held-out accuracy {acc:.3f} fell below {self.cfg.heldout_fraction:g} × its step-0 value {acc0:.3f} "
                f"(by {(acc0 - acc) / max(se, 1e-12):.1f} standard errors, {n} problems)")

    def last_good_step(self, symptom: str) -> int:
        """Before the symptom began: the last held-out check that passed, or the step before the streak."""
        return self.last_heldout_ok if symptom.startswith("held-out") else self.healthy_step

    def message(self, step: int, symptom: str, checkpoints_dir: Path, gauge: float | None) -> str:
        good = last_checkpoint_at_or_before(checkpoints_dir, self.last_good_step(symptom))
        where = (f"last good checkpoint: {good}" if good is not None
                 else f"no checkpoint was saved before the symptom began (step {self.last_good_step(symptom)})")
        gauge_text = (f"gradient-gap step-size gauge η/(Δμ(1−J)/T) at its last measurement: {gauge:.3g}" if gauge is not None
                      else "gradient-gap gauge not measured (train.telemetry.gradient_gap=1 measures it)")
        return (f"train: the policy collapsed at step {step}: {symptom}; {where}; {gauge_text}. The stage is not done: "
                "rerun with a lower train.lr (or from the checkpoint above); train.guard.enabled=false lets such a run finish")
