"""A driver lane: batches generated in a thread of the driver while remote workers start.

A Ray run on CPUs spends its first seconds starting Ray, then its actors (a process each,
importing torch), then their pipelines; the driver has torch and the plan in hand the whole
time. The lane runs batches from the same queue with the same :class:`BatchRunner` (so the
same bytes: the plan fixes each batch, convolutions are thread-count invariant) until the
executor retires it, which it does once every actor is generating: from then on the cores are
the actors'. The lane only generates; the executor's own thread writes and records its output
like an actor's, so the lane adds no write path of its own.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

from diffspec.plan.batches import Batch
from diffspec.run.executors.base import RunContext
from diffspec.run.executors.writing import lower_priority
from diffspec.run.runner import BatchOutput, BatchRunner

#: Ray's own default for its workers: the lane is one more worker, sharing the cores fairly
#: with the actors' start-up (a lane at niceness 0 starved their imports; at 19 it ran nothing).
LANE_NICENESS = 15


@dataclass(frozen=True)
class LaneResult:
    batch: Batch
    output: BatchOutput | None = None
    error: BaseException | None = None


class DriverLane:
    """One generating thread in the driver, holding at most one batch at a time."""

    def __init__(self, wid: int, device: str, threads: int | None, context: RunContext) -> None:
        self.wid = wid
        self.device = device
        self.threads = threads
        self.context = context
        self.load_key: Any = None
        self.batch: Batch | None = None  # given and not yet taken back
        self.batches_run = 0
        self.retired = False
        self._inbox: queue.Queue[Batch | None] = queue.Queue()
        self._outbox: queue.Queue[LaneResult] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"diffspec-lane-{wid}", daemon=True)
        self._driver_threads: int | None = None

    def start(self) -> None:
        self._thread.start()

    @property
    def idle(self) -> bool:
        return self.batch is None

    def give(self, batch: Batch) -> None:
        assert self.batch is None and not self.retired
        self.batch = batch
        self.load_key = batch.load_key
        self._inbox.put(batch)

    def take(self) -> LaneResult | None:
        """The lane's finished batch, if it has one (never blocks)."""
        try:
            result = self._outbox.get_nowait()
        except queue.Empty:
            return None
        self.batch = None
        self.batches_run += 1
        return result

    def retire(self) -> None:
        """No more batches: the thread frees its pipeline and ends after the one it holds."""
        if not self.retired:
            self.retired = True
            self._inbox.put(None)

    def _loop(self) -> None:
        lower_priority(LANE_NICENESS)
        runner: BatchRunner | None = None
        if self.threads:
            import torch

            self._driver_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        try:
            while True:
                batch = self._inbox.get()
                if batch is None:
                    return
                try:
                    if runner is None:
                        runner = BatchRunner(self.device, self.context.backend_factory, worker=self.wid)
                    self._outbox.put(LaneResult(batch, output=runner.run(batch)))
                except BaseException as exc:  # the executor runs the batch again on an actor
                    self._outbox.put(LaneResult(batch, error=exc))
        finally:
            if runner is not None:
                runner.close()
            if self._driver_threads is not None:
                import torch

                torch.set_num_threads(self._driver_threads)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
