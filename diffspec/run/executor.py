"""Executors: where batches run. In-process for one worker, one process per device otherwise.

Both executors hand the driver :class:`Outcome` objects as batches finish; the driver records
them. Catalog rows are written by one process only (the driver), and only after the files they
point to are durable:

* :class:`LocalExecutor` runs batches in the driver's own thread and writes files and rows in
  a second thread, so PNG encoding and syncing overlap the next batch's generation.
* :class:`ProcessExecutor` starts one worker process per device (``multiprocessing`` "spawn"
  context, safe with torch). Workers generate, write the PNG files (durable) and send rows back
  over their own pipe; the driver appends them. The driver hands out batches one at a time with
  affinity to the pipeline a worker already holds (``key.load_key()``), so models are not
  reloaded. A worker that dies (SIGKILL, segfault, OOM killer) loses only its in-flight batch:
  the batch goes back to the queue and a new worker starts, within bounds; a batch that keeps
  killing workers fails.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffspec.errors import DiffspecError, GenerationError
from diffspec.run.batching import Batch
from diffspec.run.runner import BatchOutput, BatchRunner, event
from diffspec.run.writer import ImageWriter

MAX_ATTEMPTS = 3  # a batch whose worker died this many times fails


@dataclass
class Outcome:
    """What the driver learns when a batch finishes (or cannot)."""

    batch_id: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    worker: int = 0
    recorded: bool = False  # rows already appended to the catalog (in-process writer thread)


@dataclass(frozen=True)
class WriterSettings:
    output: str
    run_id: str
    dataset: str
    labels: dict[str, str]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_devices(devices: Any, workers: int | None) -> list[str]:
    """One entry per worker: ``cuda:<i>`` per GPU, else ``cpu`` × workers.

    ``devices``: ``auto`` (every CUDA GPU, else the CPU), ``cpu``, or a list of GPU ids.
    """
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices == "cpu":
        gpus: list[int] = []
    elif devices == "auto" or devices is None:
        gpus = list(range(available))
    else:
        gpus = [int(d) for d in devices]
        missing = [d for d in gpus if d >= available]
        if missing:
            raise GenerationError(
                f"budget.devices lists GPU {', '.join(map(str, missing))} but this machine has "
                f"{available} CUDA device{'s' if available != 1 else ''}; use `devices: auto` or `devices: cpu`"
            )
    if gpus:
        return [f"cuda:{i}" for i in gpus]
    return ["cpu"] * max(1, int(workers or 1))


def threads_per_worker(devices: Sequence[str]) -> int | None:
    """torch threads per CPU worker process: the cores split between them."""
    if len(devices) <= 1 or not all(d == "cpu" for d in devices):
        return None
    return max(1, cpu_count() // len(devices))


def _lower_priority() -> None:
    """Linux: lower this thread's scheduling priority (nice +10), so writing never takes a core
    from torch's threads; the writer mostly waits on the disk anyway."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def write_outcome(writer: ImageWriter, batch: Batch, out: BatchOutput, worker: int) -> Outcome:
    written = writer.write_files(out.items, out.scheduler_configs)
    rows = writer.rows(written, out.seconds, out.batch_sizes, out.scheduler_configs, out.dtype)
    return Outcome(batch.id, rows, list(out.failures), list(out.events), worker)


# ================================================================================ in-process
class LocalExecutor:
    """Batches in this process: generated in the calling thread, written and recorded by a
    writer thread, so PNG encoding and fsync overlap the next batch's generation.

    Generation stays on the calling thread on purpose: torch's OpenMP pool belongs to the
    thread that uses it, and a second thread running parallel regions next to an idle pool of
    the first (which spins before it sleeps) ran the pipeline 2x slower on 2 cores (measured).
    """

    def __init__(self, batches: Sequence[Batch], device: str, writer: ImageWriter,
                 record: Callable[[list[dict[str, Any]]], Any], backend_factory: Any = None) -> None:
        self.batches = deque(batches)
        self.device = device
        self.writer = writer
        self.record = record
        self.runner = BatchRunner(device, backend_factory, worker=0)
        self._stop = False
        self._write_q: queue.Queue = queue.Queue(maxsize=1)
        self._out: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._sent_end = False
        self._done = False
        self.workers = 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._write, name="diffspec-write", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        _lower_priority()
        try:
            while True:
                item = self._write_q.get()
                if item is None:
                    break
                if self._error is not None:
                    continue  # drain so the generating thread never blocks
                batch, out = item
                try:
                    outcome = write_outcome(self.writer, batch, out, 0)
                    self.record(outcome.rows)
                    outcome.recorded = True
                except BaseException as exc:
                    self._error = exc
                    continue
                self._out.put(outcome)
        finally:
            self._out.put(None)

    def _end(self) -> None:
        if not self._sent_end:
            self._sent_end = True
            self._write_q.put(None)
            # Free the pipeline off the critical path (on a GPU with a gc pass and an emptied cache).
            threading.Thread(target=self._release, name="diffspec-release", daemon=True).start()

    def _release(self) -> None:
        _lower_priority()
        try:
            self.runner.close(collect=False)
        except Exception:
            pass

    def request_stop(self) -> None:
        self._stop = True

    def poll(self, timeout: float) -> list[Outcome] | None:
        """Run the next batch here (if any), then return the outcomes recorded so far; None
        once everything finished."""
        if self._done:
            return None
        if self._error is not None:
            self._stop = True
        if self.batches and not self._stop:
            batch = self.batches.popleft()
            self._write_q.put((batch, self.runner.run(batch)))  # waits while the writer is a batch behind
            wait = 0.0
        else:
            self._end()
            wait = timeout
        items = []
        try:
            items.append(self._out.get(timeout=wait) if wait else self._out.get_nowait())
            while True:
                items.append(self._out.get_nowait())
        except queue.Empty:
            pass
        if None in items:
            self._done = True
            if self._thread is not None:
                self._thread.join()
            if self._error is not None:
                raise self._error
        return [i for i in items if i is not None]

    def close(self) -> None:
        """Stop; the pipeline is freed in the background."""
        self._stop = True
        self._end()
        if self._thread is not None:
            self._thread.join(timeout=60)


# ============================================================================ worker processes
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


def worker_main(wid: int, device: str, threads: int | None, tasks: Any, results: Any,
                settings: WriterSettings, backend_factory: Any, parent_pid: int) -> None:
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
    if not worker_loop(wid, device, tasks, results, settings, backend_factory):
        os._exit(4)


def worker_loop(wid: int, device: str, tasks: Any, results: Any, settings: WriterSettings, backend_factory: Any) -> bool:
    """Receive batches until told to stop; generate, write files (a writer thread overlaps the
    next batch), send rows back. Returns False after an error (already reported)."""
    send_lock = threading.Lock()
    failed = threading.Event()

    def send(message: Any) -> None:
        with send_lock:
            results.send(message)

    def report() -> None:
        failed.set()
        try:
            send(("error", wid, traceback.format_exc()))
        except Exception:
            pass

    runner: BatchRunner | None = None
    try:
        runner = BatchRunner(device, backend_factory, worker=wid)
        writer = ImageWriter(Path(settings.output), settings.run_id, settings.dataset, settings.labels, device)
        write_q: queue.Queue = queue.Queue(maxsize=1)

        def write_loop() -> None:
            _lower_priority()
            while True:
                item = write_q.get()
                if item is None:
                    return
                if failed.is_set():
                    continue
                batch, out = item
                try:
                    send(("outcome", wid, write_outcome(writer, batch, out, wid)))
                except BaseException:
                    report()

        thread = threading.Thread(target=write_loop, name=f"diffspec-write-{wid}", daemon=True)
        thread.start()
        send(("ready", wid, os.getpid()))
        while not failed.is_set():
            try:
                message = tasks.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            batch: Batch = message
            out = runner.run(batch)
            send(("generated", wid, batch.id))
            write_q.put((batch, out))
        write_q.put(None)
        thread.join()
        runner.close()
        if failed.is_set():
            return False
        send(("bye", wid))
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
    def __init__(self, batches: Sequence[Batch], devices: Sequence[str], settings: WriterSettings,
                 backend_factory: Any = None, max_attempts: int = MAX_ATTEMPTS, max_restarts: int | None = None,
                 local_first: bool = True) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.batches = {b.id: b for b in batches}
        self.devices = list(devices)
        self.threads = threads_per_worker(self.devices)
        self.settings = settings
        self.factory = backend_factory
        self.max_attempts = max_attempts
        self.max_restarts = max_restarts if max_restarts is not None else 3 * len(self.devices) + 3
        self.restarts = 0
        self.attempts: dict[int, int] = {}
        self.queues: dict[Any, deque[int]] = {}
        for b in batches:  # batches arrive in run order; a deque per model keeps that order
            self.queues.setdefault(b.load_key, deque()).append(b.id)
        self.workers: list[_Worker] = []
        self._next_wid = 0
        self._stopping = False
        self._done = False
        self._pending_outcomes: list[Outcome] = []
        self.workers_count = len(self.devices)
        self.local_first = local_first
        self._driver_threads: int | None = None

    # ---- workers ------------------------------------------------------------------------
    def _spawn(self, device: str, local: bool = False) -> _Worker:
        wid = self._next_wid
        self._next_wid += 1
        task_r, task_w = self.ctx.Pipe(duplex=False)
        res_r, res_w = self.ctx.Pipe(duplex=False)
        if local:
            process: Any = _LocalProcess(worker_loop, (wid, device, task_r, res_w, self.settings, self.factory),
                                         name=f"diffspec-worker-{wid}")
        else:
            process = self.ctx.Process(
                target=worker_main, name=f"diffspec-worker-{wid}",
                args=(wid, device, self.threads, task_r, res_w, self.settings, self.factory, os.getpid()),
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

    def _handle(self, worker: _Worker, message: Any) -> None:
        kind = message[0]
        if kind == "ready":
            worker.pid = message[2]
        elif kind == "generated":
            worker.generating = None
        elif kind == "outcome":
            outcome: Outcome = message[2]
            worker.outstanding.pop(outcome.batch_id, None)
            self._pending_outcomes.append(outcome)
        elif kind == "error":
            self._pending_outcomes.append(Outcome(-1, events=[event(
                "worker_error", f"worker {worker.wid} on {worker.device} raised: {message[2].strip().splitlines()[-1]}",
                worker=worker.wid, traceback=message[2][-4000:])]))
        elif kind == "bye":
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
        events = []
        for batch in lost:
            self.attempts[batch.id] = self.attempts.get(batch.id, 0) + 1
            if self.attempts[batch.id] >= self.max_attempts:
                message = f"worker died {self.attempts[batch.id]} times running this batch (last exit code {code})"
                events.append(event("batch_failed", f"batch {batch.id} failed: {message}", batch=batch.id))
                self._pending_outcomes.append(Outcome(batch.id, failures=[(u.fingerprint, message) for u in batch.units]))
            else:
                self.queues[batch.load_key].appendleft(batch.id)
                events.append(event("requeue", f"batch {batch.id} ({len(batch)} units) back in the queue", batch=batch.id))
        events.insert(0, event(
            "worker_died", f"worker {worker.wid} (pid {worker.pid}) on {worker.device} exited with code {code} "
            f"with {len(lost)} batch{'es' if len(lost) != 1 else ''} in flight", worker=worker.wid, exit_code=code))
        if (self._has_work() or lost) and not self._stopping:
            if self.restarts < self.max_restarts:
                self.restarts += 1
                new = self._spawn(worker.device)  # a process, also in place of the driver's own worker
                events.append(event("worker_restart", f"started worker {new.wid} on {worker.device} in place of worker {worker.wid}",
                                    worker=new.wid, replaces=worker.wid))
        self._pending_outcomes.append(Outcome(-1, events=events))

    def _fail_rest(self, why: str) -> None:
        for q in self.queues.values():
            while q:
                batch = self.batches[q.popleft()]
                self._pending_outcomes.append(Outcome(batch.id, failures=[(u.fingerprint, why) for u in batch.units]))

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
        out, self._pending_outcomes = self._pending_outcomes, []
        if self._done and not out:
            return None
        return out

    def close(self, wait: bool = True) -> None:
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
        if self._driver_threads is not None:
            import torch

            torch.set_num_threads(self._driver_threads)
            self._driver_threads = None
            for conn in (w.tasks, w.results):
                try:
                    conn.close()
                except OSError:
                    pass


def make_executor(name: str) -> None:
    if name not in ("local", "processes"):
        if name == "ray":
            raise DiffspecError("the ray executor is not available in this installation (pip install 'diffspec[ray]'); use --executor local")
        raise DiffspecError(f"unknown executor {name!r}; expected local")
