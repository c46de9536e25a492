"""The in-process executor: one worker, in the calling process.

Batches are generated in the calling thread and written and recorded by a writer thread, so
PNG encoding and syncing overlap the next batch's generation. Generation stays on the calling
thread on purpose: torch's OpenMP pool belongs to the thread that uses it, and a second thread
running parallel regions next to an idle pool of the first (which spins before it sleeps) ran
the pipeline 2x slower on 2 cores (measured).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Sequence

from diffspec.errors import PlanError
from diffspec.plan.batches import Batch
from diffspec.run.executors.base import Outcome, RecordFn, RunContext
from diffspec.run.executors.writing import lower_priority, record_outcome, write_batch
from diffspec.run.runner import BatchOutput, BatchRunner
from diffspec.run.writer import ImageWriter


class InProcessExecutor:
    name = "inprocess"

    def __init__(self, devices: Sequence[str], context: RunContext, record: RecordFn) -> None:
        if len(devices) != 1:
            raise PlanError(f"the inprocess executor runs one worker; the plan has {len(devices)}")
        self.devices = tuple(devices)
        self.device = devices[0]
        self.record = record
        self.writer = ImageWriter(context.output, context.run_id, context.dataset, dict(context.labels), self.device)
        self.runner = BatchRunner(self.device, context.backend_factory, worker=0)
        self.batches: deque[Batch] = deque()
        self._stop = False
        # One batch waits for the writer at most: generation never runs far ahead of what is durable.
        self._write_q: queue.Queue[tuple[Batch, BatchOutput] | None] = queue.Queue(maxsize=1)
        self._out: queue.Queue[Outcome | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._sent_end = False
        self._done = False
        self._releaser: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._write, name="diffspec-write", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        if self._done:
            raise RuntimeError("submit after the executor finished")
        self.batches.append(batch)

    def _write(self) -> None:
        lower_priority()
        try:
            while True:
                item = self._write_q.get()
                if item is None:
                    break
                if self._error is not None:
                    continue  # drain so the generating thread never blocks
                _, out = item
                try:
                    outcome = record_outcome(write_batch(self.writer, out, 0), self.record)
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
            self._releaser = threading.Thread(target=self._release, name="diffspec-release", daemon=True)
            self._releaser.start()

    def _release(self) -> None:
        lower_priority()
        try:
            self.runner.close(collect=False)
        except Exception:
            pass

    def request_stop(self) -> None:
        self._stop = True

    def poll(self, timeout: float) -> list[Outcome] | None:
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
        items: list[Outcome | None] = []
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
        # A thread still inside torch when the interpreter exits aborts the process.
        if self._releaser is not None:
            self._releaser.join(timeout=30)

    def abort(self) -> None:
        """Generation ran in the caller's thread, which the interrupt already stopped; the
        writer finishes the file it is writing (milliseconds), so this is `close`."""
        self.close()
