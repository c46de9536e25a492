"""The Ray executor: one Ray actor per GPU (or GPU share), or per planned CPU worker.

Each actor holds a :class:`~diffspec.run.runner.BatchRunner` (its loaded pipeline) and runs
the batches the driver formed from the plan, exactly as a local worker would, so the same plan
gives the same bytes at the same batch size. The driver hands batches out with affinity to
the pipeline an actor holds (``batch.load_key``, as the process executor does) and keeps at
most :data:`IN_FLIGHT_PER_ACTOR` batches per actor in flight: one running, one waiting in the
actor's mailbox so the actor never idles between batches.

Writes (``budget.shared_storage``, see docs/ray.md):

* default: the actor encodes the PNGs (the same deterministic ``encode_png`` / ``png_metadata``)
  and returns their bytes; the driver writes them (``ImageWriter.write_encoded``: temp file,
  fsync, rename, folder fsync) and then appends the rows. Every byte crosses the driver.
* ``shared_storage: true``: every node mounts the output root at the same path; the actor writes
  the files with the same ``ImageWriter`` and returns the records; the driver appends them.

CPU plans on a local Ray (no ``--ray-address``) also get a driver lane
(:mod:`~diffspec.run.executors.lane`): the driver generates batches in a thread of its own
while Ray, its actors and their pipelines start, and stops taking batches once every actor is
generating. The lane's batches are the plan's batches, so the bytes do not change.

Either way rows are appended by the driver only, through the run's Recorder (each fingerprint
once), after their files are durable. An actor that dies (killed, segfault, OOM killer, its
node lost) loses only its in-flight batches: they go back to the queue and a new actor starts
(our own requeue, bounded like the process executor's; Ray's own actor restart is off, so a
batch is never run twice behind our back). A batch that keeps killing actors fails.
"""

from __future__ import annotations

import errno
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from diffspec.errors import DiffspecError, PlanError
from diffspec.plan.batches import Batch
from diffspec.plan.execution import RAY_EXTRA, RayPlan
from diffspec.plan.unit import PipelineKey, WorkUnit
from diffspec.run.events import RunEvent, UnitFailure, event
from diffspec.run.executors.base import Outcome, RecordFn, RunContext
from diffspec.run.executors.lane import DriverLane, LaneResult
from diffspec.run.executors.writing import record_outcome, write_batch
from diffspec.run.space import is_disk_full

MAX_ATTEMPTS = 3  # a batch whose actor died this many times fails
IN_FLIGHT_PER_ACTOR = 2
#: Seconds the run waits with no actor placed (the cluster lost its nodes) before failing the rest.
PLACEMENT_TIMEOUT = 600.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PlanError(f"the ray executor needs Ray, which is not installed here: {RAY_EXTRA}") from None
    return ray


@dataclass(frozen=True)
class Encoded:
    """A generated batch as PNG bytes, for the driver to write (the default, no shared storage)."""

    batch_id: int
    files: tuple[tuple[WorkUnit, bytes], ...]
    seconds: dict[str, float]
    batch_sizes: dict[str, int]
    failures: tuple[UnitFailure, ...]
    events: tuple[RunEvent, ...]
    scheduler_configs: dict[PipelineKey, dict[str, Any]]
    dtype: str | None
    device: str


class BatchActor:
    """The body of one actor (made remote with ``ray.remote`` by the executor)."""

    def __init__(self, wid: int, device: str, threads: int | None, context: RunContext, shared_storage: bool) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from diffspec.run.runner import BatchRunner
        from diffspec.run.writer import ImageWriter

        self.wid = wid
        self.device = device
        self.runner = BatchRunner(device, context.backend_factory, worker=wid)
        self.writer = (
            ImageWriter(context.output, context.run_id, context.dataset, dict(context.labels), device)
            if shared_storage
            else None
        )

    def where(self) -> tuple[int, str]:
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def run(self, batch: Batch) -> Outcome | Encoded:
        from diffspec.run.writer import encode_items

        out = self.runner.run(batch)
        if self.writer is not None:  # shared storage: durable files here, rows by the driver
            return write_batch(self.writer, out, self.wid)
        return Encoded(
            out.batch_id,
            tuple(encode_items(out.items, out.scheduler_configs)),
            out.seconds,
            out.batch_sizes,
            tuple(out.failures),
            tuple(out.events),
            out.scheduler_configs,
            out.dtype,
            self.device,
        )

    def close(self) -> None:
        self.runner.close()


@dataclass
class _Actor:
    wid: int
    device: str
    handle: Any
    ready_ref: Any = None  # answers once the actor is placed and built
    outstanding: dict[int, Any] = field(default_factory=dict)  # batch id -> ObjectRef, in submission order
    load_key: Any = None  # the pipeline it holds once its queued batches ran
    ready: bool = False  # placed on a node and built: only then does it get batches
    delivered: bool = False  # returned a batch: loaded and generating
    gone: bool = False
    pid: int | None = None
    node: str | None = None
    asked_at: float = field(default_factory=time.monotonic)


class RayExecutor:
    name = "ray"

    def __init__(
        self,
        devices: Sequence[str],
        context: RunContext,
        record: RecordFn,
        max_attempts: int = MAX_ATTEMPTS,
        max_restarts: int | None = None,
        placement_timeout: float = PLACEMENT_TIMEOUT,
    ) -> None:
        self.ray = import_ray()
        execution = context.execution
        cuda = any(d.startswith("cuda") for d in devices)
        planned = getattr(execution, "ray", None)
        self.plan: RayPlan = (
            planned if planned is not None else RayPlan(None, len(devices), 1.0 if cuda else 0.0, False)
        )
        self.devices = tuple(devices)
        self.cuda = cuda
        self.context = context
        self.record = record
        self.max_attempts = max_attempts
        self.max_restarts = max_restarts if max_restarts is not None else 3 * len(self.devices) + 3
        self.restarts = 0
        self.placement_timeout = placement_timeout
        self._unplaced_since: float | None = None
        self.attempts: dict[int, int] = {}
        self.batches: dict[int, Batch] = {}
        self.queues: dict[Any, deque[int]] = {}
        self.actors: list[_Actor] = []
        self.inflight: dict[Any, tuple[_Actor, int]] = {}  # ObjectRef -> (actor, batch id)
        self._next_wid = 0
        self._stopping = False
        self._done = False
        self._pending: list[Outcome] = []
        self._fatal: BaseException | None = None
        self._owns_ray = False
        self._remote: Any = None
        self._options: dict[str, Any] = {}
        self._threads: int | None = None
        # The plan decided it (CPU plan, local Ray, budget.driver_lane); the lane only runs on "cpu".
        self._wants_lane = self.plan.driver_lane and not cuda
        self.lane: DriverLane | None = None
        self._connected = False
        self._aborting = False

    # ---- set-up -------------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # the caller's Ray session (the Python API, tests): used, left running
            return
        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if self.plan.address:
            kwargs["address"] = self.plan.address
        else:
            from diffspec.machine import cpu_count

            kwargs.update(num_cpus=cpu_count(), include_dashboard=False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {self.plan.address}" if self.plan.address else "a local Ray"
            raise DiffspecError(f"cannot start the ray executor on {where}: {type(exc).__name__}: {exc}") from None
        self._owns_ray = True

    def _actor_options(self) -> None:
        """Resources per actor, checked against the cluster: an actor that cannot be placed
        would wait forever, so say so now."""
        resources = self.ray.cluster_resources()
        n = len(self.devices)
        if self.cuda:
            share = self.plan.gpus_per_actor or 1.0
            have = float(resources.get("GPU", 0.0))
            if have + 1e-9 < share * n:
                raise DiffspecError(
                    f"the plan has {n} Ray actor{'s' if n != 1 else ''} of {share:g} GPU each and the "
                    f"Ray cluster has {have:g} GPUs: add GPUs to the cluster, or plan for fewer "
                    "(budget.devices, budget.gpus_per_actor)"
                )
            self._options = {"num_gpus": share, "num_cpus": 1}
            self._threads = None
        else:
            have = float(resources.get("CPU", 0.0))
            if have < 1e-9:
                raise DiffspecError("the Ray cluster has no CPUs to run the plan's CPU actors")
            # The cores split between the actors, as between CPU worker processes.
            per = have / n
            self._options = {"num_cpus": per if per < 1 else float(int(per))}
            self._threads = max(1, int(per))

    def _spawn(self, device: str) -> _Actor:
        wid = self._next_wid
        self._next_wid += 1
        name = f"diffspec-{self.context.run_id}-{wid}"
        handle = self._remote.options(name=name, max_restarts=0, max_task_retries=0, **self._options).remote(
            wid, "cuda:0" if device.startswith("cuda") else "cpu", self._threads, self.context, self.plan.shared_storage
        )
        # Batches go to an actor once it is placed and built, never into the mailbox of one that
        # the cluster cannot place (after a node is lost there may be no room for a replacement).
        actor = _Actor(wid, device, handle, ready_ref=handle.where.remote())
        self.actors.append(actor)
        return actor

    def start(self) -> None:
        if self._wants_lane:
            # Ray starts on the first poll, once the lane holds a batch: its seconds overlap generation.
            from diffspec.machine import cpu_count

            # The lane takes an actor's share of the cores, as an actor would.
            threads = max(1, cpu_count() // max(1, len(self.devices)))
            self.lane = DriverLane(self._next_wid, "cpu", threads, self.context)
            self._next_wid += 1
            self.lane.start()
            note = event(
                "driver_lane",
                f"the driver generates (lane {self.lane.wid}) while Ray and its actors start",
                worker=self.lane.wid,
            )
            self._pending.append(Outcome(-1, events=(note,)))
            return
        self._start_ray()

    def _start_ray(self) -> None:
        self._connected = True
        t0 = time.monotonic()
        self._connect()
        connected_in = time.monotonic() - t0
        try:
            self._actor_options()
            self._remote = self.ray.remote(BatchActor)
            for device in self.devices:
                self._spawn(device)
        except BaseException:
            self.close()
            raise
        # Where a run's time goes before its first image (see docs/ray.md): Ray's start-up here,
        # each actor's start in `worker_ready`, its pipeline's load in the runner's `load` event.
        if not self._owns_ray:
            how = "used the Ray session already running"
        elif self.plan.address:
            how = f"connected to the Ray cluster at {self.plan.address} in {connected_in:.2f}s"
        else:
            how = f"started a local Ray in {connected_in:.2f}s"
        started = event("ray_start", f"{how}; {len(self.devices)} actors asked for", seconds=round(connected_in, 3))
        self._pending.append(Outcome(-1, events=(started,)))

    def submit(self, batch: Batch) -> None:
        if self._done:
            raise RuntimeError("submit after the executor finished")
        self.batches[batch.id] = batch
        self.queues.setdefault(batch.load_key, deque()).append(batch.id)

    # ---- scheduling ---------------------------------------------------------------------
    def _has_work(self) -> bool:
        return any(self.queues.values())

    def _pick(self, actor: _Actor | DriverLane) -> int | None:
        own = self.queues.get(actor.load_key)
        if own:
            return own.popleft()
        held = {a.load_key for a in self.actors if not a.gone and a is not actor}
        if self.lane is not None and self._lane_active() and self.lane is not actor:
            held.add(self.lane.load_key)
        for lk, q in self.queues.items():
            if q and lk not in held:
                return q.popleft()
        for q in self.queues.values():
            if q:
                return q.popleft()
        return None

    def _assign(self, actor: _Actor) -> None:
        while actor.ready and not actor.gone and not self._stopping and len(actor.outstanding) < IN_FLIGHT_PER_ACTOR:
            bid = self._pick(actor)
            if bid is None:
                return
            batch = self.batches[bid]
            ref = actor.handle.run.remote(batch)
            actor.outstanding[bid] = ref
            self.inflight[ref] = (actor, bid)
            actor.load_key = batch.load_key

    # ---- results ------------------------------------------------------------------------
    def _placed(self, actor: _Actor) -> None:
        ref, actor.ready_ref = actor.ready_ref, None
        try:
            actor.pid, actor.node = self.ray.get(ref)
            actor.ready = True
        except Exception as exc:  # it died while starting (its node lost, its constructor raised)
            self._lost(actor, None, exc)
            return
        seconds = time.monotonic() - actor.asked_at
        ready = event(
            "worker_ready",
            f"Ray actor {actor.wid} (pid {actor.pid}) ready {seconds:.2f}s after it was asked for",
            worker=actor.wid,
            seconds=round(seconds, 3),
        )
        self._pending.append(Outcome(-1, events=(ready,)))

    def _collect(self, ref: Any) -> None:
        ex = self.ray.exceptions
        entry = self.inflight.pop(ref, None)
        if entry is None:  # already requeued with the rest of a dead actor's batches
            return
        actor, bid = entry
        actor.outstanding.pop(bid, None)
        try:
            result = self.ray.get(ref)
            actor.delivered = True
        except ex.TaskCancelledError:
            return  # dropped after a stop, never started
        except ex.RayTaskError as exc:  # the batch raised inside a live actor (the runner isolates unit errors)
            cause = getattr(exc, "cause", None) or exc
            if is_disk_full(cause) and self._fatal is None:
                # Retrying elsewhere would fill the same disk: stop, keep what is recorded.
                self._fatal = OSError(errno.ENOSPC, f"No space left on device (Ray actor {actor.wid}, writing images)")
                self.request_stop()
                return
            last = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
            events = [
                event(
                    "worker_error",
                    f"Ray actor {actor.wid} on {actor.device} raised: {last}",
                    worker=actor.wid,
                    traceback=str(exc)[-4000:],
                )
            ]
            self._retry(self.batches[bid], f"the batch raised {type(cause).__name__}: {last}", events)
            self._pending.append(Outcome(-1, events=tuple(events)))
            return
        except (
            ex.RayActorError,
            ex.WorkerCrashedError,
            ex.NodeDiedError,
            ex.ObjectLostError,
            ex.OutOfMemoryError,
        ) as exc:
            self._lost(actor, bid, exc)
            return
        self._record(lambda: self._finish(result))

    def _record(self, finish: Any) -> None:
        """Write and record one finished batch; a full disk stops the run (keeping what is
        recorded) instead of failing batch after batch on the same disk."""
        try:
            self._pending.append(finish())
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            if self._fatal is None:
                self._fatal = exc
            self.request_stop()

    def _writer(self, device: str) -> Any:
        from diffspec.run.writer import ImageWriter

        ctx = self.context
        return ImageWriter(ctx.output, ctx.run_id, ctx.dataset, dict(ctx.labels), device)

    def _finish(self, result: Outcome | Encoded) -> Outcome:
        if isinstance(result, Outcome):  # shared storage: the actor wrote the files
            return record_outcome(result, self.record)
        writer = self._writer(result.device)
        written = writer.write_encoded(result.files)
        records = writer.records(written, result.seconds, result.batch_sizes, result.scheduler_configs, result.dtype)
        return record_outcome(Outcome(result.batch_id, tuple(records), result.failures, result.events), self.record)

    # ---- the driver lane ------------------------------------------------------------------
    def _lane_active(self) -> bool:
        return self.lane is not None and not self.lane.retired

    def _lane_step(self) -> None:
        """Take the lane's finished batch, retire it once every actor generates, else feed it."""
        lane = self.lane
        if lane is None:
            return
        result = lane.take()
        if result is not None:
            self._lane_finished(lane, result)
        if lane.retired or not lane.idle:
            return
        live = [a for a in self.actors if not a.gone]
        if self._stopping or not self._has_work() or (live and all(a.delivered for a in live)):
            self._retire_lane(lane)
            return
        bid = self._pick(lane)
        if bid is not None:
            lane.give(self.batches[bid])

    def _retire_lane(self, lane: DriverLane) -> None:
        lane.retire()
        note = event(
            "driver_lane",
            f"the driver's lane ran {lane.batches_run} batch{'es' if lane.batches_run != 1 else ''}; "
            "the actors take the rest",
            worker=lane.wid,
            batches=lane.batches_run,
        )
        self._pending.append(Outcome(-1, events=(note,)))

    def _lane_finished(self, lane: DriverLane, result: LaneResult) -> None:
        if result.error is not None:
            exc = result.error
            why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            events = [event("worker_error", f"the driver's lane raised: {why}", worker=lane.wid)]
            self._retry(result.batch, f"the batch raised {type(exc).__name__}: {why}", events)
            self._pending.append(Outcome(-1, events=tuple(events)))
            if not lane.retired:
                self._retire_lane(lane)  # the actors take its batches from here
            return
        output = result.output
        assert output is not None
        self._record(lambda: record_outcome(write_batch(self._writer(lane.device), output, lane.wid), self.record))

    def _retry(self, batch: Batch, why: str, events: list[RunEvent]) -> None:
        self.attempts[batch.id] = self.attempts.get(batch.id, 0) + 1
        if self.attempts[batch.id] >= self.max_attempts or self._stopping:
            if self._stopping:
                return  # not made, not recorded: the next apply makes it
            message = f"{why} ({self.attempts[batch.id]} attempts)"
            events.append(event("batch_failed", f"batch {batch.id} failed: {message}", batch=batch.id))
            self._pending.append(
                Outcome(batch.id, failures=tuple(UnitFailure(u.fingerprint, message) for u in batch.units))
            )
        else:
            self.queues[batch.load_key].appendleft(batch.id)
            events.append(event("requeue", f"batch {batch.id} ({len(batch)} units) back in the queue", batch=batch.id))

    def _lost(self, actor: _Actor, bid: int | None, exc: BaseException) -> None:
        """An actor died (or its node): every batch it had is requeued, a new actor starts."""
        lost = ([bid] if bid is not None else []) + list(actor.outstanding)
        for ref in actor.outstanding.values():
            self.inflight.pop(ref, None)
        actor.outstanding.clear()
        if not actor.gone:
            actor.gone = True
            try:
                self.ray.kill(actor.handle, no_restart=True)
            except Exception:
                pass
        why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        events = [
            event(
                "worker_died",
                f"Ray actor {actor.wid} on {actor.device} died ({type(exc).__name__}: {why}) "
                f"with {len(lost)} batch{'es' if len(lost) != 1 else ''} in flight",
                worker=actor.wid,
            )
        ]
        for lost_id in reversed(lost):  # requeued in their original order
            self._retry(self.batches[lost_id], f"its Ray actor died ({type(exc).__name__})", events)
        if self._has_work() and not self._stopping and self.restarts < self.max_restarts:
            self.restarts += 1
            new = self._spawn(actor.device)
            events.append(
                event(
                    "worker_restart",
                    f"started Ray actor {new.wid} in place of actor {actor.wid}",
                    worker=new.wid,
                    replaces=actor.wid,
                )
            )
        self._pending.append(Outcome(-1, events=tuple(events)))

    def _fail_rest(self, why: str) -> None:
        for q in self.queues.values():
            while q:
                batch = self.batches[q.popleft()]
                self._pending.append(
                    Outcome(batch.id, failures=tuple(UnitFailure(u.fingerprint, why) for u in batch.units))
                )

    # ---- driver API ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """Batches running now finish and are recorded; the ones waiting in actors' mailboxes
        are cancelled (Ray cancels a queued actor task; a running one is never interrupted)."""
        self._stopping = True
        for actor in self.actors:
            for ref in list(actor.outstanding.values())[1:]:
                try:
                    self.ray.cancel(ref)
                except Exception:
                    pass

    def poll(self, timeout: float) -> list[Outcome] | None:
        if self._done:
            return None
        self._lane_step()
        if not self._connected and not self._stopping:
            self._start_ray()  # blocks for Ray's start-up while the lane generates
            self._lane_step()
        for actor in self.actors:
            self._assign(actor)
        if self.lane is not None and not self.lane.idle:
            timeout = min(timeout, 0.02)  # the lane's result is seen within this
        starting = {a.ready_ref: a for a in self.actors if a.ready_ref is not None and not a.gone}
        refs = list(self.inflight)
        waiting = refs + (list(starting) if self._has_work() and not self._stopping else [])
        if waiting:
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=timeout)
            if ready:
                ready, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=0)
            for ref in ready:
                if ref in starting:
                    self._placed(starting[ref])
                else:
                    self._collect(ref)
            self._lane_step()
            for actor in self.actors:
                self._assign(actor)
        elif self.lane is not None and not self.lane.idle:
            time.sleep(timeout)
            self._lane_step()
        lane_busy = self.lane is not None and not self.lane.idle
        if not self.inflight and not lane_busy:
            if self._has_work() and not self._stopping:
                live = [a for a in self.actors if not a.gone]
                now = time.monotonic()
                if self._lane_active():
                    pass  # the lane takes the queue's next batch on the next poll
                elif not live:
                    self._fail_rest(f"no Ray actor left: {self.restarts} restarts used (limit {self.max_restarts})")
                    self._done = True
                elif not any(a.ready for a in live):
                    self._unplaced_since = self._unplaced_since or now
                    if now - self._unplaced_since > self.placement_timeout:
                        self._fail_rest(
                            f"no Ray actor could be placed for {self.placement_timeout:.0f}s: the cluster "
                            "has no room for the plan's actors"
                        )
                        self._done = True
            else:
                self._done = True
        if any(a.ready for a in self.actors if not a.gone):
            self._unplaced_since = None
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            self._done = True
            raise fatal
        out, self._pending = self._pending, []
        if self._done and not out:
            return None
        return out

    def close(self) -> None:
        """Free the actors (and their pipelines); stop the local Ray this run started."""
        self._stopping = True
        if self.lane is not None:
            self.lane.retire()
        ray = self.ray
        if ray.is_initialized():
            for actor in self.actors:
                if not actor.gone:
                    actor.gone = True
                    try:
                        ray.kill(actor.handle, no_restart=True)
                    except Exception:
                        pass
        self.inflight.clear()
        if self._owns_ray:
            self._owns_ray = False
            try:
                ray.shutdown()
            except Exception:
                pass
        if self.lane is not None and not self._aborting:
            self.lane.join(60.0)  # idle after a finished run: frees its pipeline at once

    def abort(self) -> None:
        """Stop now: actors are killed with their in-flight batches (never half-recorded: rows
        come from this driver only; a shared-storage actor's temp files are removed by the
        next run, whole unrecorded files adopted by it). The lane's batch is dropped: the lane
        writes nothing itself."""
        self._aborting = True
        self.close()
