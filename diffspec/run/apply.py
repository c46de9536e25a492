"""`apply`: execute a plan's create set, resumable, recorded in the catalog batch by batch.

`apply` takes a plan and nothing else: what to make, and how (executor, devices, memory
strategy and batch size per pipeline group), are the plan's decisions. Steps (SQLMesh's
plan/apply, with ``add_interval`` per batch):

0. check this machine against the plan's execution decisions (re-plan visibly only where the
   spec left the choice to the machine; refuse otherwise), before any work;
1. take the output lock (one apply per output root; a dead run's flock is gone with it);
2. clean what killed runs left: temp files under ``images/`` and ``catalog/``, and the small
   catalog parts of runs that never compacted;
3. re-check the catalog: units recorded since the plan was made are skipped, so a plan (or a
   plan file) run twice makes only what is missing;
4. record a ``runs`` row (phase ``started``) with the spec hash, devices, versions, counts;
5. form the batches the plan's decisions give and run them on the plan's executor
   (`diffspec.run.executors`); every finished batch's rows are appended as one part after
   its files are durable;
6. record the end (``finished`` / ``interrupted`` / ``failed``) with counts and a JSON log of
   what the run did (OOM retries, strategy escalations, worker restarts, failed units);
7. compact this run's image parts into one; with ``prune=True`` tombstone and delete what the
   plan removes (apply never deletes without being asked).

Ctrl-C (SIGINT) or SIGTERM stops after the in-flight batches and records the run as
interrupted; a second signal aborts at once (what was recorded stays recorded, whole).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diffspec.atomic import remove_leftovers
from diffspec.catalog.lock import OutputLock
from diffspec.catalog.recorder import Recorder, merge_run_parts, tidy_catalog
from diffspec.catalog.records import RunRecord
from diffspec.catalog.store import Catalog, new_run_id
from diffspec.errors import DiskFullError
from diffspec.machine import Machine
from diffspec.plan.batches import plan_batches
from diffspec.plan.diff import Plan
from diffspec.plan.execution import ExecutionPlan, replan
from diffspec.plan.unit import WorkUnit
from diffspec.run.adopt import adopt_orphans
from diffspec.run.events import NOTABLE, RunEvent, UnitFailure, event
from diffspec.run.executors import EXECUTORS, Outcome, RunContext
from diffspec.run.space import bytes_per_image, estimate_bytes, free_bytes, full_path, human, is_disk_full
from diffspec.run.stage_phase import StageContext, StageRunner, check_runners
from diffspec.run.writer import ImageWriter, check_inside

VERSIONED_PACKAGES = ("diffspec", "torch", "diffusers", "transformers", "accelerate")


@dataclass(frozen=True)
class ApplyResult:
    run_id: str
    planned: int  # units the plan asked to create
    made: int  # images written and recorded by this run
    skipped: int  # already recorded when the run started
    failed: int  # units that could not be made
    interrupted: bool
    seconds: float
    images_per_second: float
    removed: int  # images pruned (apply --prune)
    log: tuple[str, ...] = ()
    spec_path: str = ""
    output: str = ""
    devices: tuple[str, ...] = ()
    phase: str = "finished"
    failures: tuple[UnitFailure, ...] = field(default=(), repr=False)  # the first 100
    per_class: dict[str, int] = field(default_factory=dict)  # made per class
    stages: dict[str, Any] = field(default_factory=dict)  # what the post-generation stages did
    adopted: int = 0  # whole images a killed run wrote but never recorded, recorded by this run
    executor: str = ""
    replanned: tuple[str, ...] = ()  # how the run's execution differs from the plan's, if it does

    @property
    def remaining(self) -> int:
        return max(0, self.planned - self.skipped - self.adopted - self.made - self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "phase": self.phase,
            "spec": self.spec_path,
            "output": self.output,
            "planned": self.planned,
            "made": self.made,
            "skipped": self.skipped,
            "adopted": self.adopted,
            "failed": self.failed,
            "remaining": self.remaining,
            "interrupted": self.interrupted,
            "removed": self.removed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "devices": list(self.devices),
            "executor": self.executor,
            "replanned": list(self.replanned),
            "made_per_class": dict(sorted(self.per_class.items())),
            "failures": [{"fingerprint": fp, "error": why} for fp, why in self.failures],
            "log": list(self.log),
            "stages": self.stages,
        }


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class _Signals:
    """SIGINT/SIGTERM set a stop flag (finish in-flight batches); a second signal aborts at once."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.wrapping_up = False  # the batches are over: what is left is milliseconds of bookkeeping
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.wrapping_up:
            return  # let the run record its end: aborting now would only lose the log
        if self.stop.is_set():  # a second signal, of either kind: stop now (recorded rows stay whole)
            raise KeyboardInterrupt
        self.stop.set()

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _run_record(
    plan: Plan,
    run_id: str,
    phase: str,
    started: datetime,
    *,
    execution: ExecutionPlan,
    planned: int,
    made: int = 0,
    skipped: int = 0,
    failed: int = 0,
    log: list[RunEvent] | None = None,
    versions: dict[str, Any] | None = None,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        phase=phase,
        dataset=plan.dataset,
        spec_path=plan.spec_path,
        spec_hash=plan.spec_hash,
        profile=plan.profile,
        started_at=started,
        ended_at=None if phase == "started" else datetime.now(timezone.utc),
        executor=execution.executor,
        devices=json.dumps(list(execution.devices)),
        workers=execution.workers,
        versions=json.dumps(versions or {}, sort_keys=True),
        planned=planned,
        made=made,
        skipped=skipped,
        failed=failed,
        host=socket.gethostname(),
        pid=os.getpid(),
        log=json.dumps([e.to_dict() for e in log or []], ensure_ascii=False),
        speed=json.dumps(speed_record(plan), sort_keys=True),
    )


def speed_record(plan: Plan) -> dict[str, dict[str, Any]]:
    """Each model with speed options that this run makes images with, and its options: the
    place where options that change no pixels (and so are not in fingerprints) are kept."""
    out: dict[str, dict[str, Any]] = {}
    for name, index in plan.create_index.items():
        if not len(index):
            continue
        for variant in plan.units[name].variants:
            model = variant.key.model
            if model.speed:
                out[model.name] = model.speed.to_dict()
    return out


def machine_for_run() -> Machine:
    from diffspec.run.machine import torch_machine

    return torch_machine()


def apply_plan(
    plan: Plan,
    *,
    prune: bool = False,
    progress: bool = True,
    console: Any = None,
    max_units: int | None = None,
    backend_factory: Any = None,
    machine: Machine | None = None,
    stage_runners: Mapping[str, StageRunner] | None = None,
) -> ApplyResult:
    """Make the plan's create set, as the plan decided. See the module docstring for the steps.

    The plan alone says what to run and how (`Plan.execution`); before any work this machine
    (``machine``, default: what torch sees) is checked against it: a mismatch the spec left to
    the machine (``devices: auto``, no memory figure) is re-planned and the changes are logged
    and returned; any other mismatch raises a PlanError. ``backend_factory`` replaces
    :class:`diffspec.generate.backend.Backend` (same call signature; picklable for worker
    processes): for tests that inject failures. ``stage_runners`` run the plan's stages after
    the images (`diffspec.run.stage_phase`); a plan with stage units to make needs them.
    """
    runners = dict(stage_runners or {})
    check_runners(plan.stages, runners)
    output = Path(plan.output)
    units: list[WorkUnit] = list(plan.units_to_create())
    execution = plan.execution
    replanned: tuple[str, ...] = ()
    if units:
        checked = replan(execution, {u.key for u in units}, machine or machine_for_run())
        execution, replanned = checked.execution, checked.changes
    run_id = new_run_id()
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    lock = OutputLock(output, run_id).acquire()
    # Everything alive now (torch, diffusers, the plan) stays alive for the run: out of the
    # collector's way, so a full collection walks only what the run makes (one took 0.18 s).
    gc.freeze()
    try:
        # Installed for the whole run, wrap-up included: a signal must never land in Python's
        # default handler half-way through the run's bookkeeping.
        with _Signals() as signals:
            return _apply_locked(
                plan,
                units,
                execution,
                replanned,
                run_id,
                t0,
                started,
                prune=prune,
                progress=progress,
                console=console,
                max_units=max_units,
                backend_factory=backend_factory,
                stale_lock=lock.was_stale,
                signals=signals,
                stage_runners=runners,
            )
    finally:
        gc.unfreeze()
        lock.release()


def _apply_locked(
    plan: Plan,
    units: list[WorkUnit],
    execution: ExecutionPlan,
    replanned: tuple[str, ...],
    run_id: str,
    t0: float,
    started: datetime,
    *,
    prune: bool,
    progress: bool,
    console: Any,
    max_units: int | None,
    backend_factory: Any,
    stale_lock: bool,
    signals: _Signals,
    stage_runners: Mapping[str, StageRunner],
) -> ApplyResult:
    from diffspec.run.render import RunProgress

    output = Path(plan.output)
    catalog = Catalog(output)
    log: list[RunEvent] = []
    if replanned:
        log.append(
            event(
                "replanned",
                "this machine differs from the plan's; decided again: " + "; ".join(replanned),
                changes=list(replanned),
            )
        )
    if stale_lock:
        log.append(
            event(
                "stale_lock", "the previous run on this output did not end cleanly; its lock was released by its death"
            )
        )
    leftovers = remove_leftovers(output / "images") + catalog.clean_leftovers()
    if leftovers:
        log.append(event("leftovers", f"removed {leftovers} temp files of killed runs", count=leftovers))
    for note in tidy_catalog(catalog, run_id):
        log.append(event("catalog_tidy", note))

    # Re-check the catalog: what got recorded since the plan was made is skipped.
    planned = len(units)
    existing = _live_fingerprints(catalog)
    todo = [u for u in units if u.fingerprint not in existing]
    skipped = planned - len(todo)
    if max_units is not None:
        todo = todo[: max(0, int(max_units))]
    for cls in sorted({u.class_name for u in todo}):
        check_inside(output, f"images/{cls}/x.png")

    labels = {name: units_.label for name, units_ in plan.units.items()}
    recorder = Recorder(catalog, run_id)
    # Whole images a killed run wrote but did not record: recorded now, not made again.
    adopted = adopt_orphans(todo, output, ImageWriter(output, run_id, plan.dataset, labels, "unknown"), recorder)
    if adopted:
        todo = [u for u in todo if u.fingerprint not in adopted]
        log.append(
            event(
                "adopted",
                f"recorded {len(adopted)} whole images a killed run had written but not recorded",
                count=len(adopted),
            )
        )
    batches = plan_batches(todo, execution)
    versions = package_versions()
    known_sizes = bytes_per_image(catalog) if todo else {}
    needed = estimate_bytes(todo, known_sizes)
    free = free_bytes(output)
    if todo and free < needed:
        message = (
            f"the output root {output} has {human(free)} free and the {len(todo)} images to make need about "
            f"{human(needed)}: the run stops cleanly when the disk is full, and a later apply goes on"
        )
        log.append(event("low_space", message, free=free, needed=needed))
    try:
        catalog.append_run(
            _run_record(
                plan,
                run_id,
                "started",
                started,
                execution=execution,
                planned=planned,
                skipped=skipped,
                versions=versions,
            )
        )
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(_disk_full_message(output, todo, known_sizes, 0, exc)) from None
        raise
    log.append(
        event(
            "plan",
            f"plan: {planned} to create, {plan.total_keep} kept (already in the catalog), "
            f"{plan.total_remove} to remove",
            create=planned,
            keep=plan.total_keep,
            remove=plan.total_remove,
        )
    )
    log.append(
        event(
            "execution",
            f"{execution.describe()}; "
            + "; ".join(
                f"{g.model}: {g.memory.describe()}" for g in sorted(execution.groups.values(), key=lambda g: g.model)
            ),
            executor=execution.executor,
            devices=list(execution.devices),
            groups={
                gid: {"strategy": g.memory.strategy, "batch_size": g.memory.batch_size}
                for gid, g in execution.groups.items()
            },
        )
    )

    context = RunContext(str(output), run_id, plan.dataset, labels, backend_factory, execution)
    runner = EXECUTORS.create(execution.executor, execution.devices, context, recorder)

    made = 0
    failures: list[UnitFailure] = []
    per_class: Counter[str] = Counter()
    interrupted = False
    error: BaseException | None = None
    class_totals = Counter(u.class_name for u in todo)
    view = RunProgress(console, class_totals, enabled=progress and bool(todo))
    t_setup = time.perf_counter() - t0
    t_first: float | None = None
    try:
        with view:
            for note in replanned:
                view.note(f"re-planned for this machine: {note}")
            for e in log:
                if e.kind == "low_space":
                    view.note(f"warning: {e.message}")
            runner.start()
            for batch in batches:
                runner.submit(batch)
            while True:
                if signals.stop.is_set() and not interrupted:
                    interrupted = True
                    runner.request_stop()
                    view.note("stopping after the batches in flight (Ctrl-C again to abort)")
                outcomes = runner.poll(0.2)
                if outcomes is None:
                    break
                for outcome in outcomes:
                    made += _take(outcome, log, failures, per_class, view)
                    if t_first is None and outcome.records:
                        t_first = time.perf_counter() - t0
    except BaseException as exc:  # KeyboardInterrupt (second Ctrl-C), a bug, a full disk
        error = exc
        interrupted = isinstance(exc, KeyboardInterrupt)
    finally:
        signals.wrapping_up = True
        try:
            runner.abort() if isinstance(error, KeyboardInterrupt) else runner.close()
        except BaseException:
            pass
        try:
            recorder.flush()  # the rows of the last batches (one part per couple of seconds)
        except BaseException as exc:  # a full disk: the files are whole; the next apply adopts them
            if error is None:
                error = exc
    t_batches = time.perf_counter() - t0
    # Temp files of dead workers; nobody else writes here (we hold the lock). Only after a
    # death: a live writer removes its own temp files, and this walks every image folder.
    if any(e.kind == "worker_died" for e in log):
        remove_leftovers(output / "images")
    if interrupted and len(recorder.seen) - len(adopted) + len(failures) >= len(todo):
        interrupted = False  # the stop came after the last batch: nothing is missing
    images_interrupted = interrupted
    stage_outcomes: dict[str, Any] = {}
    if error is None and not interrupted:
        # The stages read the images this run recorded: images first, then each stage in order.
        for stage in plan.stages:
            if not stage.total_create:
                continue
            context = StageContext(
                output, catalog, run_id, execution.devices[0] if execution.devices else "cpu", signals.stop, view.note
            )
            try:
                done = stage_runners[stage.stage](stage, context)
            except BaseException as exc:  # a model that cannot load, a full disk, a second Ctrl-C
                error = exc
                interrupted = isinstance(exc, KeyboardInterrupt)
                break
            log.extend(done.events)
            log.append(
                event(
                    f"stage_{stage.stage}",
                    f"stage {stage.stage}: {done.made} made, {done.failed} failed, "
                    f"{done.waiting} waiting for their image, {done.seconds:.2f}s",
                    **done.to_dict(),
                )
            )
            stage_outcomes[stage.stage] = done.to_dict()
            if done.interrupted:
                interrupted = True
                break
    failed = len(failures)
    stage_failed = sum(int(o["failed"]) for o in stage_outcomes.values())
    if error is not None and not isinstance(error, KeyboardInterrupt):
        phase = "failed"
        log.append(event("error", f"{type(error).__name__}: {error}"))
    elif interrupted:
        phase = "interrupted"
        left = f"with {len(todo) - made - failed} units left" if images_interrupted else "during the stages"
        log.append(event("interrupted", f"stopped by the user {left}"))
    else:
        phase = "failed" if failed or stage_failed else "finished"

    removed = 0
    if prune and error is None and not interrupted and plan.removals:
        from diffspec.run.prune import prune_locked

        pruned = prune_locked(plan, catalog, run_id)
        removed = pruned.count
        log.append(event("prune", f"removed {pruned.count} images ({pruned.bytes} bytes)", count=pruned.count))
    seconds = time.perf_counter() - t0
    if todo:
        log.append(
            event(
                "timing",
                f"set-up {t_setup:.2f}s, first images recorded at {t_first or 0:.2f}s, "
                f"last at {t_batches:.2f}s, wrap-up {seconds - t_batches:.2f}s",
                setup=round(t_setup, 3),
                first=round(t_first or 0, 3),
                batches=round(t_batches, 3),
            )
        )
    try:
        catalog.append_run(
            _run_record(
                plan,
                run_id,
                phase,
                started,
                execution=execution,
                planned=planned,
                made=made,
                skipped=skipped,
                failed=failed,
                log=log,
                versions=versions,
            )
        )
    except OSError as exc:  # a full disk may refuse the run's end row too; the images rows are whole
        if not is_disk_full(exc) or error is None:
            raise
    try:
        merge_run_parts(catalog, run_id)
    except Exception as exc:  # compaction is an optimisation; readers cope with many parts
        log.append(event("compact_failed", f"{type(exc).__name__}: {exc}"))
    if error is not None and not isinstance(error, KeyboardInterrupt):
        if is_disk_full(error):
            done = set(recorder.seen)
            left = [u for u in todo if u.fingerprint not in done]
            raise DiskFullError(_disk_full_message(output, left, known_sizes, len(done), error)) from None
        raise error
    return ApplyResult(
        run_id=run_id,
        planned=planned,
        made=made,
        skipped=skipped,
        adopted=len(adopted),
        failed=failed,
        interrupted=interrupted,
        seconds=seconds,
        images_per_second=made / seconds if seconds > 0 else 0.0,
        removed=removed,
        log=tuple(e.message for e in log),
        spec_path=plan.spec_path,
        output=str(output),
        devices=execution.devices,
        phase=phase,
        failures=tuple(failures[:100]),
        per_class=dict(per_class),
        executor=execution.executor,
        replanned=replanned,
        stages={"run": stage_outcomes} if stage_outcomes else {},
    )


def _disk_full_message(
    output: Path,
    left: list[WorkUnit],
    known: dict[tuple[int, int], float],
    recorded: int,
    error: BaseException | None = None,
) -> str:
    where = full_path(error)
    folder = where.parent if where is not None else output
    return (
        f"no space left on the filesystem holding {folder.resolve()} (output root {output.resolve()}; "
        f"{human(free_bytes(folder))} free there): {recorded} images of this run are recorded and whole, "
        f"{len(left)} still to make need about {human(estimate_bytes(left, known))}. "
        "Free space there and run `diffspec apply` again: it makes only what is missing"
    )


def _live_fingerprints(catalog: Catalog) -> set[str] | frozenset[str]:
    if not catalog.exists():
        return frozenset()
    index = catalog.index()
    return getattr(index, "fingerprint_set", None) or set(index.fingerprints)


def _take(
    outcome: Outcome, log: list[RunEvent], failures: list[UnitFailure], per_class: Counter[str], view: Any
) -> int:
    """Count one outcome (its executor recorded it); returns images made."""
    if outcome.records:
        counts = Counter(r.class_name for r in outcome.records)
        per_class.update(counts)
        view.advance(counts)
    for e in outcome.events:
        log.append(e)
        if e.kind in NOTABLE:
            view.note(e.message)
    if outcome.failures:
        failures.extend(outcome.failures)
        view.fail(len(outcome.failures))
    return len(outcome.records)
