"""Group work units into batches: one pipeline call per batch.

Units share a batch only when they share a :class:`~diffspec.plan.unit.PipelineKey` (model,
mode, scheduler, size, steps, guidance, ...): everything one pipeline call must have in common.
The batch size per key comes from the plan-time memory strategy
(:func:`diffspec.plan.estimate.memory_plan` for the device kind the run uses). Order is
deterministic: batches of one model stay together (so a worker never reloads it), and within a
model batches follow (class, index).

Batch composition never changes an image beyond float rounding: every image's noise comes from
its own generator seeded from ``unit.seed``, never from its place in a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from diffspec.plan.estimate import MemoryPlan, memory_plan
from diffspec.plan.unit import PipelineKey, WorkUnit


@dataclass(frozen=True)
class Batch:
    """Units for one pipeline call; ``id`` is the batch's position in the run's order."""

    id: int
    key: PipelineKey
    units: tuple[WorkUnit, ...]
    strategy: str  # the memory strategy to load the pipeline with

    def __len__(self) -> int:
        return len(self.units)

    @property
    def load_key(self) -> Any:
        return self.key.load_key()


class MemoryPlans:
    """Memory strategy and batch size per pipeline key, for the device kind the run uses.

    On a GPU the plan's VRAM budget decides; on a CPU the RAM budget (``budget.ram_gb``, or 3/4
    of this machine's memory) bounds the batch size the same way.
    """

    def __init__(self, budget: Any, device_kind: str) -> None:
        self.budget = budget
        self.device_kind = device_kind
        self._cache: dict[PipelineKey, MemoryPlan] = {}

    def __call__(self, key: PipelineKey) -> MemoryPlan:
        plan = self._cache.get(key)
        if plan is None:
            b = self.budget
            vram = b.vram_gb if self.device_kind == "cuda" else None
            if self.device_kind == "cuda" and vram is None:
                vram = _cuda_memory_gb()
            plan = memory_plan(key, vram, b.ram_gb, b.max_batch, b.strategy)
            self._cache[key] = plan
        return plan


def _cuda_memory_gb() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 2**30 * 0.9
    except Exception:  # pragma: no cover - no GPU here
        pass
    return None


def unit_order(unit: WorkUnit) -> tuple[str, int]:
    return (unit.class_name, unit.index)


def make_batches(units: Iterable[WorkUnit], size_of: Any, strategy_of: Any = None) -> list[Batch]:
    """Batches of units sharing a key, at most ``size_of(key)`` units each, deterministic order.

    ``size_of`` and ``strategy_of`` map a PipelineKey to a batch size and a memory strategy
    (a :class:`MemoryPlans` gives both). Units are taken in (class, index) order; a key's units
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
            batches.append(Batch(len(batches), key, tuple(group[start:start + size]), strategy))
    return batches


def plan_batches(units: Sequence[WorkUnit], budget: Any, device_kind: str) -> list[Batch]:
    plans = MemoryPlans(budget, device_kind)

    def strategy(key: PipelineKey) -> str:
        chosen = plans(key).strategy
        return chosen if chosen != "auto" else "none"

    return make_batches(units, lambda k: plans(k).batch_size, strategy)
