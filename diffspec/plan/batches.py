"""Group work units into batches: one pipeline call per batch.

Units share a batch only when they share a :class:`~diffspec.plan.unit.PipelineKey` (model,
mode, scheduler, size, steps, guidance, ...): everything one pipeline call must have in common.
The batch size and memory strategy per key are the plan's decisions
(:class:`diffspec.plan.execution.ExecutionPlan`), made once at plan time. Order is
deterministic: batches of one model stay together (so a worker never reloads it), and within a
model batches follow (class, index).

Batch composition never changes an image beyond float rounding: every image's noise comes from
its own generator seeded from ``unit.seed``, never from its place in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from diffspec.plan.execution import ExecutionPlan
from diffspec.plan.unit import PipelineKey, WorkUnit


@dataclass(frozen=True)
class Batch:
    """Units for one pipeline call; ``id`` is the batch's position in the run's order."""

    id: int
    key: PipelineKey
    units: tuple[WorkUnit, ...]
    strategy: str  # the memory strategy to load the pipeline with
    tune: bool = False  # measure smaller calls and keep the fastest size (budget.tune_batch)

    def __len__(self) -> int:
        return len(self.units)

    @property
    def load_key(self) -> Any:
        return self.key.load_key()


def unit_order(unit: WorkUnit) -> tuple[str, int]:
    return (unit.class_name, unit.index)


def make_batches(
    units: Iterable[WorkUnit],
    size_of: Callable[[PipelineKey], int],
    strategy_of: Callable[[PipelineKey], str] | None = None,
    tune: bool = False,
) -> list[Batch]:
    """Batches of units sharing a key, at most ``size_of(key)`` units each, deterministic order.

    ``size_of`` and ``strategy_of`` map a PipelineKey to a batch size and a memory strategy
    (the plan's execution decisions give both). Units are taken in (class, index) order; a key's units
    fill batches in that order; keys of one model (``key.load_key()``) stay together, models in
    the order their first unit appears.
    """
    ordered = sorted(units, key=unit_order)
    by_key: dict[PipelineKey, list[WorkUnit]] = {}
    for unit in ordered:
        by_key.setdefault(unit.key, []).append(unit)
    model_order: dict[Any, int] = {}
    for key in by_key:  # insertion order = order of first unit
        model_order.setdefault(key.load_key(), len(model_order))
    keys = sorted(by_key, key=lambda k: model_order[k.load_key()])  # stable: keeps first-unit order within a model
    batches: list[Batch] = []
    for key in keys:
        size = max(1, int(size_of(key)))
        strategy = strategy_of(key) if strategy_of else "none"
        group = by_key[key]
        for start in range(0, len(group), size):
            batches.append(Batch(len(batches), key, tuple(group[start : start + size]), strategy, tune))
    return batches


def plan_batches(units: Iterable[WorkUnit], execution: ExecutionPlan) -> list[Batch]:
    """The batches of ``units`` under the plan's decisions: its batch size and strategy per group."""
    return make_batches(
        units, lambda k: execution.decision(k).batch_size, execution.strategy_for, tune=execution.budget.tune_batch
    )
