"""The executor interface: where a plan's batches run.

An executor takes batches, runs them on its workers and hands the driver an :class:`Outcome`
per finished batch, after the batch's files are durable and its records are in the catalog
(through the ``record`` callable it was given: one :class:`~diffspec.catalog.recorder.Recorder`
per run, which appends each fingerprint once). The driver (`diffspec.run.apply`) only counts,
shows progress and keeps the log. Every executor keeps the same promises:

* a batch runs exactly as the plan formed it (same units, same batch size, same strategy);
  out-of-memory backoff inside a batch is reported as events;
* a record is appended only after its file is durable;
* after :meth:`Executor.request_stop`, batches already running finish and are recorded,
  queued ones are dropped;
* a worker that dies loses only its in-flight batches, which run again elsewhere or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from diffspec.catalog.records import ImageRecord
from diffspec.plan.batches import Batch
from diffspec.run.events import RunEvent, UnitFailure

#: Appends records to the run's catalog; returns those not recorded before (each fingerprint once).
RecordFn = Callable[[Sequence[ImageRecord]], list[ImageRecord]]


@dataclass(frozen=True)
class RunContext:
    """What every worker needs to write a run's images (picklable, for worker processes)."""

    output: str
    run_id: str
    dataset: str
    labels: Mapping[str, str]
    backend_factory: Any = None  # replaces diffspec.generate.backend.Backend (tests that inject faults)
    execution: Any = None  # the run's ExecutionPlan: an executor's own plan-time decisions (e.g. `ray`)


@dataclass(frozen=True)
class Outcome:
    """A finished batch (or a note from the executor, with ``batch_id`` -1)."""

    batch_id: int
    records: tuple[ImageRecord, ...] = ()  # recorded by this outcome (new to the catalog)
    failures: tuple[UnitFailure, ...] = ()
    events: tuple[RunEvent, ...] = ()
    worker: int = 0


class Executor(Protocol):
    """Runs batches. Use: ``start()``, ``submit()`` every batch, then ``poll()`` until it
    returns None; ``request_stop()`` to finish early; ``close()`` always (or ``abort()``)."""

    name: str
    devices: tuple[str, ...]

    def start(self) -> None:
        """Start the workers (the first may already be generating when this returns)."""

    def submit(self, batch: Batch) -> None:
        """Queue a batch. Allowed until :meth:`poll` has returned None."""

    def poll(self, timeout: float) -> list[Outcome] | None:
        """Outcomes finished since the last call (may run a batch in the calling thread);
        None once every submitted batch has been reported, or dropped after a stop."""

    def request_stop(self) -> None:
        """Finish the batches running now, drop the queued ones."""

    def close(self) -> None:
        """Stop the workers and free their pipelines; safe to call twice and after errors."""

    def abort(self) -> None:
        """Stop at once (a second Ctrl-C): batches in flight are lost, never half-recorded
        (their temp files are removed by the next run); what was recorded stays."""


ExecutorFactory = Callable[[Sequence[str], RunContext, RecordFn], Executor]


@dataclass
class Registry:
    """Executor names to factories: a new executor registers here, `apply` does not change."""

    factories: dict[str, ExecutorFactory] = field(default_factory=dict)

    def register(self, name: str, factory: ExecutorFactory) -> None:
        self.factories[name] = factory

    def create(self, name: str, devices: Sequence[str], context: RunContext, record: RecordFn) -> Executor:
        from diffspec.errors import PlanError

        if name not in self.factories:
            raise PlanError(f"unknown executor {name!r}; this installation has: {', '.join(sorted(self.factories))}")
        return self.factories[name](devices, context, record)
