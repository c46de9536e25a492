"""The process-pool executor: one worker process per device.

Workers (``multiprocessing`` "spawn" context, safe with torch) generate, write the PNG files
(durable) and send records back over their own pipe; the driver appends them to the catalog,
so catalog rows are written by one process only. The driver hands out batches one at a time
with affinity to the pipeline a worker already holds (``batch.load_key``), so models are not
reloaded. A worker that dies (SIGKILL, segfault, OOM killer) loses only its in-flight batch:
the batch goes back to the queue and a new worker starts, within bounds; a batch that keeps
killing workers fails. For CPU workers the driver hosts the first worker in a thread, so
generation starts while the other processes import torch.
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from diffspec.machine import cpu_count
from diffspec.plan.batches import Batch
from diffspec.run.events import RunEvent, UnitFailure, event
from diffspec.run.executors.base import Outcome, RecordFn, RunContext
from diffspec.run.executors.writing import lower_priority, record_outcome, write_batch
from diffspec.run.runner import BatchRunner
from diffspec.run.space import is_disk_full
from diffspec.run.writer import ImageWriter

MAX_ATTEMPTS = 3  # a batch whose worker died this many times fails


def threads_per_worker(devices: Sequence[str]) -> int | None:
    """torch threads per CPU worker process: the cores split between them."""
    if len(devices) <= 1 or not all(d == "cpu" for d in devices):
        return None
    return max(1, cpu_count() // len(devices))


# ---- messages from a worker to the driver -------------------------------------------------
@dataclass(frozen=True)
class Ready:
    worker: int
    pid: int


@dataclass(frozen=True)
class Generated:
    """The worker's generating slot is free again (its writer thread still has the batch)."""

    worker: int
    batch_id: int


@dataclass(frozen=True)
class Finished:
    worker: int
    outcome: Outcome  # files durable, records not yet appended


@dataclass(frozen=True)
class Crashed:
    worker: int
    traceback: str
    disk_full: bool = False  # the output's filesystem is full: the run must stop, not retry


@dataclass(frozen=True)
class Bye:
    worker: int


WorkerMessage = Ready | Generated | Finished | Crashed | Bye


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the driver dies, so no orphan keeps writing into the output."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover
        pass


def worker_main(
    wid: int, device: str, threads: int | None, tasks: Any, results: Any, context: RunContext, parent_pid: int
) -> None:
    """A worker process: receive batches, generate, write files, send rows back."""
    _die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
    except BaseException:
        os._exit(5)
    if not worker_loop(wid, device, tasks, results, context):
        os._exit(4)


def worker_loop(wid: int, device: str, tasks: Any, results: Any, context: RunContext) -> bool:
    """Receive batches until told to stop; generate, write files (a writer thread overlaps the
    next batch), send rows back. Returns False after an error (already reported)."""
    send_lock = threading.Lock()
    failed = threading.Event()

    def send(message: WorkerMessage) -> None:
        with send_lock:
            results.send(message)

    def report() -> None:
        failed.set()
        try:
            send(Crashed(wid, traceback.format_exc(), is_disk_full(sys.exc_info()[1])))
        except Exception:
            pass

    runner: BatchRunner | None = None
    try:
        runner = BatchRunner(device, context.backend_factory, worker=wid)
        writer = ImageWriter(context.output, context.run_id, context.dataset, dict(context.labels), device)
        write_q: queue.Queue[tuple[Batch, Any] | None] = queue.Queue(maxsize=1)

        def write_loop() -> None:
            lower_priority()
            while True:
                item = write_q.get()
                if item is None:
                    return
                if failed.is_set():
                    continue
                _, out = item
                try:
                    send(Finished(wid, write_batch(writer, out, wid)))
                except BaseException:
                    report()

        thread = threading.Thread(target=write_loop, name=f"diffspec-write-{wid}", daemon=True)
        thread.start()
        send(Ready(wid, os.getpid()))
        while not failed.is_set():
            try:
                message = tasks.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            batch: Batch = message
            out = runner.run(batch)
            send(Generated(wid, batch.id))
            write_q.put((batch, out))
        write_q.put(None)
        thread.join()
        runner.close()
        if failed.is_set():
            return False
        send(Bye(wid))
        return True
    except BaseException:
        report()
        if runner is not None:
            try:
                runner.close()
            except BaseException:
                pass
        return False


class _LocalProcess:
    """A worker in a thread of the driver, shaped like a multiprocessing.Process for the executor."""

    def __init__(self, target: Any, args: tuple, name: str) -> None:
        self.ok: bool | None = None

        def run() -> None:
            self.ok = bool(target(*args))

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.pid = os.getpid()
        self.sentinel = None

    def start(self) -> None:
        self.thread.start()

    @property
    def exitcode(self) -> int | None:
        if self.thread.is_alive():
            return None
        return 0 if self.ok else 1

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()


@dataclass
class _Worker:
    wid: int
    device: str
    process: Any
    tasks: Any  # Connection: driver -> worker
    results: Any  # Connection: worker -> driver
    generating: int | None = None
    outstanding: dict[int, Batch] = field(default_factory=dict)
    load_key: Any = None
    stopping: bool = False
    gone: bool = False
    pid: int | None = None
    local: bool = False  # a thread of the driver, not a process


class ProcessExecutor:
    name = "processes"

    def __init__(
        self,
        devices: Sequence[str],
        context: RunContext,
        record: RecordFn,
        max_attempts: int = MAX_ATTEMPTS,
        max_restarts: int | None = None,
        local_first: bool = True,
    ) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.batches: dict[int, Batch] = {}
        self.devices = tuple(devices)
        self.threads = threads_per_worker(self.devices)
        self.context = context
        self.record = record
        self.max_attempts = max_attempts
        self.max_restarts = max_restarts if max_restarts is not None else 3 * len(self.devices) + 3
        self.restarts = 0
        self.attempts: dict[int, int] = {}
        self.queues: dict[Any, deque[int]] = {}  # per model, in submission (= run) order
        self.workers: list[_Worker] = []
        self._next_wid = 0
        self._stopping = False
        self._done = False
        self._pending_outcomes: list[Outcome] = []
        self.local_first = local_first
        self._driver_threads: int | None = None
        self._fatal: OSError | None = None

    def submit(self, batch: Batch) -> None:
        if self._done:
            raise RuntimeError("submit after the executor finished")
        self.batches[batch.id] = batch
        self.queues.setdefault(batch.load_key, deque()).append(batch.id)

    # ---- workers ------------------------------------------------------------------------
    def _spawn(self, device: str, local: bool = False) -> _Worker:
        wid = self._next_wid
        self._next_wid += 1
        task_r, task_w = self.ctx.Pipe(duplex=False)
        res_r, res_w = self.ctx.Pipe(duplex=False)
        if local:
            process: Any = _LocalProcess(
                worker_loop, (wid, device, task_r, res_w, self.context), name=f"diffspec-worker-{wid}"
            )
        else:
            process = self.ctx.Process(
                target=worker_main,
                name=f"diffspec-worker-{wid}",
                args=(wid, device, self.threads, task_r, res_w, self.context, os.getpid()),
                daemon=True,
            )
        process.start()
        if not local:
            task_r.close()
            res_w.close()
        worker = _Worker(wid, device, process, task_w, res_r, local=local)
        self.workers.append(worker)
        return worker

    def start(self) -> None:
        # CPU workers: the driver hosts the first one in a thread, so generation starts at once
        # while the other processes import torch and load the model (their start-up is hidden).
        local_first = self.local_first and all(d == "cpu" for d in self.devices)
        if local_first and self.threads:
            import torch

            self._driver_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        for i, device in enumerate(self.devices):
            self._spawn(device, local=local_first and i == 0)

    def _has_work(self) -> bool:
        return any(self.queues.values())

    def _pick(self, worker: _Worker) -> int | None:
        own = self.queues.get(worker.load_key)
        if own:
            return own.popleft()
        held = {w.load_key for w in self.workers if not w.gone and w is not worker}
        for lk, q in self.queues.items():
            if q and lk not in held:
                return q.popleft()
        for q in self.queues.values():
            if q:
                return q.popleft()
        return None

    def _assign(self, worker: _Worker) -> None:
        if worker.gone or worker.stopping or worker.generating is not None:
            return
        bid = None if self._stopping else self._pick(worker)
        if bid is None:
            if not worker.outstanding or self._stopping:
                self._send_stop(worker)
            return
        batch = self.batches[bid]
        try:
            worker.tasks.send(batch)
        except (BrokenPipeError, OSError):
            self.queues[batch.load_key].appendleft(bid)
            return
        worker.generating = bid
        worker.outstanding[bid] = batch
        worker.load_key = batch.load_key

    def _send_stop(self, worker: _Worker) -> None:
        if worker.stopping:
            return
        worker.stopping = True
        try:
            worker.tasks.send(None)
        except (BrokenPipeError, OSError):
            pass

    def _handle(self, worker: _Worker, message: WorkerMessage) -> None:
        if isinstance(message, Ready):
            worker.pid = message.pid
        elif isinstance(message, Generated):
            worker.generating = None
        elif isinstance(message, Finished):
            worker.outstanding.pop(message.outcome.batch_id, None)
            self._pending_outcomes.append(record_outcome(message.outcome, self.record))
        elif isinstance(message, Crashed):
            if message.disk_full and self._fatal is None:
                # Retrying elsewhere would fill the same disk: stop the run, keep what is recorded.
                self._fatal = OSError(errno.ENOSPC, f"No space left on device (worker {worker.wid}, writing images)")
                self.request_stop()
            last = message.traceback.strip().splitlines()[-1] if message.traceback.strip() else "?"
            self._pending_outcomes.append(
                Outcome(
                    -1,
                    events=(
                        event(
                            "worker_error",
                            f"worker {worker.wid} on {worker.device} raised: {last}",
                            worker=worker.wid,
                            traceback=message.traceback[-4000:],
                        ),
                    ),
                )
            )
        elif isinstance(message, Bye):
            worker.stopping = True

    def _drain(self, worker: _Worker) -> None:
        while True:
            try:
                if not worker.results.poll():
                    return
                self._handle(worker, worker.results.recv())
            except (EOFError, OSError):
                return

    def _reap(self, worker: _Worker) -> None:
        """A worker process ended: collect its last messages, requeue what it lost."""
        self._drain(worker)
        worker.gone = True
        code = worker.process.exitcode
        for conn in (worker.tasks, worker.results):
            try:
                conn.close()
            except OSError:
                pass
        lost = list(worker.outstanding.values())
        worker.outstanding.clear()
        if code == 0 and not lost:
            return
        events: list[RunEvent] = []
        for batch in lost:
            self.attempts[batch.id] = self.attempts.get(batch.id, 0) + 1
            if self.attempts[batch.id] >= self.max_attempts:
                message = f"worker died {self.attempts[batch.id]} times running this batch (last exit code {code})"
                events.append(event("batch_failed", f"batch {batch.id} failed: {message}", batch=batch.id))
                self._pending_outcomes.append(
                    Outcome(batch.id, failures=tuple(UnitFailure(u.fingerprint, message) for u in batch.units))
                )
            else:
                self.queues[batch.load_key].appendleft(batch.id)
                events.append(
                    event("requeue", f"batch {batch.id} ({len(batch)} units) back in the queue", batch=batch.id)
                )
        events.insert(
            0,
            event(
                "worker_died",
                f"worker {worker.wid} (pid {worker.pid}) on {worker.device} exited with code {code} "
                f"with {len(lost)} batch{'es' if len(lost) != 1 else ''} in flight",
                worker=worker.wid,
                exit_code=code,
            ),
        )
        if (self._has_work() or lost) and not self._stopping:
            if self.restarts < self.max_restarts:
                self.restarts += 1
                new = self._spawn(worker.device)  # a process, also in place of the driver's own worker
                events.append(
                    event(
                        "worker_restart",
                        f"started worker {new.wid} on {worker.device} in place of worker {worker.wid}",
                        worker=new.wid,
                        replaces=worker.wid,
                    )
                )
        self._pending_outcomes.append(Outcome(-1, events=tuple(events)))

    def _fail_rest(self, why: str) -> None:
        for q in self.queues.values():
            while q:
                batch = self.batches[q.popleft()]
                self._pending_outcomes.append(
                    Outcome(batch.id, failures=tuple(UnitFailure(u.fingerprint, why) for u in batch.units))
                )

    # ---- driver API ---------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stopping = True
        for w in self.workers:
            if not w.gone and w.generating is None:
                self._send_stop(w)

    def poll(self, timeout: float) -> list[Outcome] | None:
        from multiprocessing.connection import wait

        if self._done:
            return None
        live = [w for w in self.workers if not w.gone]
        for w in live:
            self._assign(w)
        waitables: dict[Any, _Worker] = {}
        for w in live:
            waitables[w.results] = w
            if w.process.sentinel is not None:
                waitables[w.process.sentinel] = w
        ready = wait(list(waitables), timeout=timeout) if waitables else []
        for obj in ready:
            w = waitables[obj]
            if obj is w.results and not w.gone:
                self._drain(w)
        for w in live:
            if not w.gone and w.process.exitcode is not None:
                self._reap(w)
        for w in self.workers:
            if not w.gone:
                self._assign(w)
        if not any(not w.gone for w in self.workers):
            if self._has_work() and not self._stopping:
                self._fail_rest(f"no worker left: {self.restarts} restarts used (limit {self.max_restarts})")
            self._done = True
        if self._fatal is not None:
            raise self._fatal
        out, self._pending_outcomes = self._pending_outcomes, []
        if self._done and not out:
            return None
        return out

    def close(self) -> None:
        self._stopping = True
        deadline = time.monotonic() + 30
        for w in self.workers:
            if not w.gone:
                self._send_stop(w)
        for w in self.workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.process.is_alive() and not w.local:
                w.process.kill()
                w.process.join(timeout=5)
        for w in self.workers:  # every worker's pipes, not only the last one's
            for conn in (w.tasks, w.results):
                try:
                    conn.close()
                except OSError:
                    pass
        if self._driver_threads is not None:
            import torch

            torch.set_num_threads(self._driver_threads)
            self._driver_threads = None

    def abort(self) -> None:
        """Kill the worker processes now: their in-flight batches are lost (files are renamed
        into place only when whole, rows come from this driver only), the rest stays recorded."""
        self._stopping = True
        for w in self.workers:
            if not w.local and w.process.is_alive():
                w.process.kill()
        self.close()
