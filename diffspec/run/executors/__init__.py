"""Executors: where a plan's batches run, behind one interface (:class:`base.Executor`).

``inprocess`` (one worker in this process), ``processes`` (one worker process per device) and
``ray`` (one Ray actor per GPU, GPU share or CPU worker; needs the ``ray`` extra) ship here;
another executor registers a factory in :data:`EXECUTORS` and `apply` runs it
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffspec.run.executors.base import Executor, Outcome, RecordFn, Registry, RunContext


def _inprocess(devices: Sequence[str], context: RunContext, record: RecordFn) -> Executor:
    from diffspec.run.executors.inprocess import InProcessExecutor

    return InProcessExecutor(devices, context, record)


def _processes(devices: Sequence[str], context: RunContext, record: RecordFn) -> Executor:
    from diffspec.run.executors.processes import ProcessExecutor

    return ProcessExecutor(devices, context, record)


def _ray(devices: Sequence[str], context: RunContext, record: RecordFn) -> Executor:
    from diffspec.run.executors.ray import RayExecutor  # imports ray (or says which extra to install)

    return RayExecutor(devices, context, record)


EXECUTORS = Registry()
EXECUTORS.register("inprocess", _inprocess)
EXECUTORS.register("processes", _processes)
EXECUTORS.register("ray", _ray)

__all__ = ["EXECUTORS", "Executor", "Outcome", "RecordFn", "Registry", "RunContext"]
