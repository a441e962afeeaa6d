"""The stage lifecycle: identity, the rerun/resume/refuse decision, staging, status and failure.

A stage's identity is its own inputs (its section plus model/task/seed: `config_hash`) and the
fingerprint of every upstream output it reads (`upstream`: each upstream stage's config hash and
a content digest of its `final/`). A stage that is done is never cleared: a rerun writes into
`.<stage>.staging/` and replaces the stage in one atomic exchange only when it succeeds; only then
are downstream stages marked stale. A done stage whose own config changed is refused (exit 2,
naming the keys) unless the rerun is allowed (`--force`, or `lco run` rerunning after an upstream).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from lco_cli.config import STAGES, Preset, config_hash, dump_yaml, to_dict
from lco_cli.config.typed import marked_keys
from lco_cli.errors import ConfigError, Interrupted, LcoError, StageLockedError
from lco_cli.runtime.console import warn
from lco_cli.runtime.rundir import STAGES_WITH_FINAL, RunDir, StageDir, atomic_write_text, exchange_dirs


def stage_inputs(preset: Preset, stage: str) -> dict:
    """What a stage's output depends on in the preset: its own section plus model/task/seed and the
    keys of other sections it reads (`read_keys`), less the keys the schema marks operational."""
    d = to_dict(preset)
    inputs = {stage: d[stage], "model": d["model"], "task": d["task"], "seed": d["seed"]}
    for key in read_keys(preset, stage):
        *path, name = key.split(".")
        source, target = d, inputs
        for part in path:
            source, target = source[part], target.setdefault(part, {})
        target[name] = source[name]
    return without_operational(inputs)


def read_keys(preset: Preset, stage: str) -> list[str]:
    """Keys outside a stage's own section that change its numbers: what its eval policies declare."""
    if stage != "eval":
        return []
    from lco_cli.evals.policies import policy_reads

    return sorted({key for pol in preset.eval.policies for key in policy_reads(pol)})


def without_operational(d: dict, prefix: str = "") -> dict:
    """`d` without the keys the schema marks `operational` (they change no result)."""
    drop = marked_keys(Preset, "operational")
    return {k: without_operational(v, f"{prefix}{k}.") if isinstance(v, dict) else v
            for k, v in d.items() if f"{prefix}{k}" not in drop}


def stage_config_hash(preset: Preset, stage: str) -> str:
    return config_hash(stage_inputs(preset, stage))


def same_config(status: dict, preset: Preset, stage: str) -> bool:
    """Whether a stage recorded in `status` ran with the preset's inputs. Inputs recorded before
    operational keys left the identity compare without them, so those stages stay done."""
    current = stage_config_hash(preset, stage)
    if status.get("config_hash") == current:
        return True
    return bool(status.get("inputs")) and config_hash(without_operational(status["inputs"])) == current


# --------------------------------------------------------------------------- upstream


def upstream_stages(preset: Preset, stage: str) -> list[str]:
    """The stages whose `final/` this stage reads, from the preset (a superset is safe: at worst a
    stage reruns when an output it did not use changed)."""
    refs: list[str] = []
    if stage == "sft":
        refs = [preset.sft.init_from]
    elif stage == "rm":
        sampler = preset.rm.pairs.sampler
        refs = [preset.rm.init_from, *(sampler if isinstance(sampler, list) else [sampler])]
    elif stage == "train":
        from lco_cli.rl.registry import get_algo  # the algorithm's own rule

        t = preset.train
        refs = [t.init_from, t.advantage_model or "", "rm" if get_algo(t.algo).needs_reward_model(t) else ""]
    elif stage == "eval":
        from lco_cli.evals.policies import policy_stages

        for pol in preset.eval.policies:
            refs += policy_stages(pol)
    if preset.model.policy in STAGES_WITH_FINAL and "base" in refs:
        refs.append(preset.model.policy)
    out = []
    for ref in refs:
        if ref in STAGES_WITH_FINAL and ref != stage and ref not in out:
            out.append(ref)
    return out


def final_digest(folder: Path) -> str:
    """Content hash of a `final/` folder: sha256 over every file's relative path and bytes.

    Computed once when the stage finishes (stored in its status.json): ~1 GB/s, so seconds for a
    3B-parameter model, against minutes to hours of training."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def output_fingerprint(run: RunDir, stage: str) -> dict | None:
    """What a downstream stage records of `stage`'s output: its config hash and final/ digest."""
    sd = run.stage(stage)
    st = sd.status() or {}
    if st.get("state") != "done" or not sd.final.exists():
        return None
    return {"config_hash": st.get("config_hash"), "final": st.get("final_digest") or final_digest(sd.final)}


def upstream_fingerprint(run: RunDir, preset: Preset, stage: str) -> dict:
    return {up: output_fingerprint(run, up) for up in upstream_stages(preset, stage)}


def changed_upstream(recorded: dict | None, current: dict) -> list[str]:
    """Upstream stages whose output differs from what the stage was built on."""
    if recorded is None:
        return []  # written by an lco that did not record its upstream
    return sorted(k for k in recorded.keys() | current.keys() if recorded.get(k) != current.get(k))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):  # an empty mapping adds no key: {} -> {x: 1} reads as "x added"
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(status: dict, preset: Preset, stage: str) -> list[str]:
    if not status.get("inputs"):
        return []  # written by an older lco that did not record its inputs
    old, new = _flatten(without_operational(status["inputs"])), _flatten(stage_inputs(preset, stage))
    return sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))


# --------------------------------------------------------------------------- the decision


@dataclasses.dataclass
class StagePlan:
    """Where and how a stage command writes: `work` is the stage folder or its staging area."""

    work: StageDir
    resume: bool
    reason: str
    restart: bool = False  # resuming an interrupted stage that left nothing to resume from (no checkpoint yet)

    @property
    def action(self) -> str:
        """'run', 'resume', or 'restart' (an interrupted stage that starts again from step 0)."""
        return "restart" if self.restart else "resume" if self.resume else "run"


def plan_stage(run: RunDir, preset: Preset, stage: str) -> StagePlan:
    """Decide resume / fresh / staged rerun — or refuse a done stage whose own config changed.

    Read-only, so every process of a launch computes the same plan."""
    main = run.stage(stage)
    status = main.status() or {}
    upstream = upstream_fingerprint(run, preset, stage)

    def same(st: dict) -> bool:
        return same_config(st, preset, stage) and not changed_upstream(st.get("upstream", upstream), upstream)

    fresh = stage in run.force
    if not main.is_done():
        resume = not fresh and status.get("state") in ("running", "failed") and same(status)
        return _resume_plan(main, "") if resume else StagePlan(main, False, "fresh run")
    staging = main.staging()
    staged_status = staging.status() or {}
    if not fresh and staged_status.get("state") in ("running", "failed") and same(staged_status):
        return _resume_plan(staging, "the interrupted rerun ")
    keys = [] if same_config(status, preset, stage) else changed_keys(status, preset, stage) or ["unknown"]
    if keys and not (fresh or stage in run.allow_rerun):
        raise ConfigError(f"stage '{stage}' is done with a different config (changed: {', '.join(keys)}); "
                          f"rerun it with --force, or use another --run-dir")
    moved = changed_upstream(status.get("upstream"), upstream)
    why = (f"{', '.join(moved)} output changed since it ran" if moved else
           f"{', '.join(keys)} changed since it ran" if keys else "rerun requested")
    return StagePlan(staging, False, f"rerun into a staging area ({why}); the finished output stays until it succeeds")


def _resume_plan(sd: StageDir, what: str) -> StagePlan:
    """An interrupted (or failed) stage with the same config: from its newest checkpoint, from the
    finished results of an eval, or — stopped before its first checkpoint — again from step 0 (a
    restart, though what it already wrote that a rerun reuses, RM pairs.jsonl, is kept)."""
    checkpoints = sd.checkpoints()
    if checkpoints:
        ck = checkpoints[-1]
        return StagePlan(sd, True, f"resume {what}from its checkpoint at step {int(ck.name.split('-')[1])} ({ck.name})")
    if any(p.is_file() for p in (sd.path / "samples").rglob("*")):  # eval: finished pairs, generations, partials
        return StagePlan(sd, True, f"resume {what}from its finished evaluation results")
    kept = " (reusing its sampled pairs.jsonl)" if (sd.path / "pairs.jsonl").exists() else ""
    return StagePlan(sd, True, f"restart {what}from step 0: it stopped before its first checkpoint{kept}", restart=True)


# --------------------------------------------------------------------------- the lifecycle


@contextlib.contextmanager
def stage_run(run: RunDir, preset_name: str, preset: Preset, stage: str, accelerator=None) -> Iterator[StageDir]:
    """Lock the stage, record config and status; mark failed (with the reason) on any error.

    Only the main process writes; the others wait until the folder is set up."""
    barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
    is_main = accelerator is None or accelerator.is_main_process
    _check_inputs(run, preset, stage, record=is_main)
    plan = plan_stage(run, preset, stage)  # every process, before anything changes
    run.plans[stage] = plan
    sd = plan.work
    sd.resume = plan.resume
    barrier()
    if accelerator is not None and not accelerator.is_main_process:
        barrier()
        yield sd
        return
    main = run.stage(stage)
    with main.lock():
        _prepare_work_dir(main, plan)
        resolved = to_dict(preset)
        section_hash = stage_config_hash(preset, stage)
        upstream = upstream_fingerprint(run, preset, stage)
        run.write_header(preset_name, resolved, config_hash(resolved))
        atomic_write_text(sd.path / "config.yaml", dump_yaml(resolved[stage]))
        previous = sd.status() or {}
        t_start, spent = time.time(), float(previous.get("seconds") or 0.0) if sd.resume else 0.0
        sd.set_status("running", config_hash=section_hash, upstream=upstream, step=previous.get("step", 0) if sd.resume else 0,
                      inputs=stage_inputs(preset, stage), interrupted=False, seconds=spent)

        def elapsed() -> float:  # wall time over every session of the stage (a resume adds to it)
            return round(spent + time.time() - t_start, 1)

        if sd.staged:
            warn(f"{stage}: {plan.reason}")
        _build_base_on_main(run, preset, stage)
        trackers: list = []
        try:
            trackers = _start_observers(sd, preset, stage)
            barrier()
            yield sd
        except KeyboardInterrupt as exc:
            sd.set_status("failed", error="interrupted", interrupted=True, seconds=elapsed())
            raise _interrupted(exc, sd) from None
        except LcoError as exc:
            sd.set_status("failed", error=exc.message, seconds=elapsed())
            raise
        except Exception as exc:
            from lco_cli.runtime.inputs import hub_error

            converted = hub_error(exc, preset, [stage])
            sd.set_status("failed", error=converted.message if converted else f"{type(exc).__name__}: {exc}",
                          seconds=elapsed())
            if converted:
                raise converted from None
            raise
        finally:
            from lco_cli.runtime.trackers import close_trackers

            close_trackers(trackers)
        _finish(run, main, sd, section_hash, elapsed())


def _check_inputs(run: RunDir, preset: Preset, stage: str, record: bool) -> None:
    """Paths and data files the stage reads, before anything runs; a stage without a finished
    output records the failure in its status (a done one is left as it is)."""
    from lco_cli.runtime.inputs import check_inputs

    try:
        check_inputs(preset, [stage])
    except LcoError as exc:
        sd = run.stage(stage)
        if record and not sd.is_done():
            with contextlib.suppress(StageLockedError), sd.lock():  # another process runs it: leave its status
                sd.set_status("failed", error=exc.message)
        raise


def _prepare_work_dir(main: StageDir, plan: StagePlan) -> None:
    """Remove what killed writers left, and start clean unless resuming (never a done stage)."""
    main.remove_stale_temp()
    staging = main.staging()
    if not plan.work.staged:
        shutil.rmtree(staging.path, ignore_errors=True)  # an abandoned rerun of an earlier done state
        if not plan.resume:
            clear_stage(main)
        return
    if not plan.resume:
        shutil.rmtree(staging.path, ignore_errors=True)
    staging.path.mkdir(parents=True, exist_ok=True)
    staging.remove_stale_temp()
    lock = staging.path / ".lock"
    if not lock.exists():  # the same lock file (inode), so the lock we hold survives the swap
        lock.hardlink_to(main.path / ".lock")


def _build_base_on_main(run: RunDir, preset: Preset, stage: str) -> None:
    """Build the built-in tiny model before the other processes start: transformers 5 writes the
    weights of `save_pretrained` on rank 0 only, so a base built by another rank would lack them."""
    from lco_cli.runtime import models

    refs = {"sft": [preset.sft.init_from], "rm": [preset.rm.init_from, preset.rm.pairs.sampler],
            "train": [preset.train.init_from], "eval": preset.eval.policies}[stage]
    if "base" in refs and models.parse_tiny_spec(preset.model.policy) is not None:
        models.build_tiny(preset.model.policy, preset.seed, run.path / "base")


def _start_observers(sd: StageDir, preset: Preset, stage: str) -> list:
    from lco_cli.runtime.optim import DivergenceWatch
    from lco_cli.runtime.trackers import open_trackers

    cfg = preset.logging
    sd.metrics.enrich.append(DivergenceWatch(stage, cfg.divergence_window, cfg.entropy_floor).observe)
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in _flatten(to_dict(preset)).items()}
    return open_trackers(sd, cfg.report_to, preset.name, flat)


def _finish(run: RunDir, main: StageDir, sd: StageDir, section_hash: str, seconds: float) -> None:
    """Mark done (with the digest of final/); a staged rerun replaces the stage, then downstream
    stages built on the old output are marked stale."""
    digest = final_digest(sd.final) if sd.final.exists() else None
    sd.set_status("done", config_hash=section_hash, step=getattr(sd, "final_step", None), final_digest=digest, seconds=seconds)
    if sd.staged:
        exchange_dirs(sd.path, main.path)
        shutil.rmtree(sd.path, ignore_errors=True)
        st = main.status() or {}
        run.record_stage(main.name, "done", st.get("config_hash"))
    _mark_downstream_stale(run, main.name)


def _mark_downstream_stale(run: RunDir, stage: str) -> None:
    current = output_fingerprint(run, stage)
    for other in STAGES:
        sd = run.stage(other)
        st = sd.status() or {}
        recorded = (st.get("upstream") or {})
        if other != stage and st.get("state") == "done" and stage in recorded and recorded[stage] != current:
            sd.update_status(stale=f"'{stage}' was rerun at {time.strftime('%Y-%m-%d %H:%M:%S')} after this stage ran; "
                                   f"rerun it (`lco run` does)")


def discard_leftover_staging(run: RunDir, stage: str) -> None:
    """A staging folder whose status is done after its swap holds the replaced output (the
    process died before removing it): remove it, unless another process holds the stage."""
    staging = run.stage(stage).staging()
    if not staging.path.is_dir() or (staging.status() or {}).get("state") in ("running", "failed"):
        return
    try:
        with run.stage(stage).lock():
            shutil.rmtree(staging.path, ignore_errors=True)
    except LcoError:  # locked: its writer cleans up
        pass


def _interrupted(exc: KeyboardInterrupt, sd: StageDir) -> Interrupted:
    """The interruption with a note saying what the next run will do."""
    from lco_cli.runtime.checkpoint import latest_good_checkpoint

    signum = getattr(exc, "signum", 2)
    ck = latest_good_checkpoint(sd)
    where = f"'{sd.name}'" + (" (a rerun in its staging area; the finished output is untouched)" if sd.staged else "")
    if ck is not None:
        note = f"stage {where} stopped; the next run resumes from its checkpoint {ck.name}"
    elif any(sd.path.glob("samples/*/*.partial.json")):  # eval.checkpoint_every_minutes (evals.partial)
        note = f"stage {where} stopped; the next run resumes from its finished results and partial files"
    else:
        note = f"stage {where} stopped before its first checkpoint; the next run starts it again from step 0"
    return Interrupted(signum, note)


def clear_stage(sd: StageDir) -> None:
    """Remove a stage's previous outputs (not its lock) before a fresh start."""
    if not sd.path.exists():
        return
    for child in sd.path.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
