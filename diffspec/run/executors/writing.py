"""What every executor does with a generated batch: durable files first, then records."""

from __future__ import annotations

import os
import threading

from diffspec.run.executors.base import Outcome, RecordFn
from diffspec.run.runner import BatchOutput
from diffspec.run.writer import ImageWriter


def lower_priority(niceness: int = 10) -> None:
    """Linux: lower this thread's scheduling priority (nice +10), so writing never takes a core
    from torch's threads; the writer mostly waits on the disk anyway. Threads it starts after
    this (torch's OpenMP pool, on its first parallel region) inherit the value."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


def write_batch(writer: ImageWriter, out: BatchOutput, worker: int) -> Outcome:
    """Write a batch's images (durable on return) and build their records, not yet recorded."""
    written = writer.write_files(out.items, out.scheduler_configs)
    records = writer.records(written, out.seconds, out.batch_sizes, out.scheduler_configs, out.dtype)
    return Outcome(out.batch_id, tuple(records), tuple(out.failures), tuple(out.events), worker)


def record_outcome(outcome: Outcome, record: RecordFn) -> Outcome:
    """Append an outcome's records; the outcome keeps only those new to the catalog."""
    if not outcome.records:
        return outcome
    fresh = record(outcome.records)
    return Outcome(outcome.batch_id, tuple(fresh), outcome.failures, outcome.events, outcome.worker)
