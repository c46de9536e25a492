"""Top-up: new units that replace a class's rejected images (``replace_rejected: true``).

A class's units are numbered 0, 1, 2, ... and unit i is the same for every target above i
(diffspec.plan.seeds.balanced_assignment), so replacing rejected images is raising the number of
units: the class gets the smallest n such that its first n units hold ``target`` images that are
not rejected (made and not rejected, or still to be made). Rejected images stay in the plan
(kept, never removed or deleted); the new units take the indexes after them, with seeds
derived from (base seed, class, index) like every unit, so the top-up is itself deterministic.
Without ``replace_rejected`` a class's units are exactly those of its target.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from diffspec.plan.compile import ClassUnits, compile_class, effective_class
from diffspec.plan.unit import ModelRef
from diffspec.spec.loader import LoadedSpec


@dataclass(frozen=True, slots=True)
class TopUp:
    rejected: int  # images among the class's planned units that are rejected (filter or review)
    added: int  # units planned beyond the target to replace them


def _rejected_among(units: ClassUnits, rejected: Collection[str]) -> int:
    return len({fp for fp in units.fingerprints if fp in rejected})


def top_up(
    loaded: LoadedSpec,
    compiled: Mapping[str, ClassUnits],
    rejected: Collection[str],
    captions: Mapping[str, tuple[str, ...]] | None = None,
    pending: Collection[str] = (),
) -> tuple[dict[str, ClassUnits], dict[str, TopUp]]:
    """``compiled`` with each replace_rejected class grown by its rejected images, and per class
    how many of its planned images are rejected and how many units replace them."""
    out = dict(compiled)
    counts: dict[str, TopUp] = {}
    models: dict[str, ModelRef] = {}
    for name, units in compiled.items():
        cls = effective_class(loaded, name, captions, pending)
        count = _rejected_among(units, rejected) if rejected else 0
        if not count or not cls.replace_rejected or cls.target == 0:
            counts[name] = TopUp(count, 0)
            continue
        # n grows while the units it adds are themselves rejected: a fixed point, reached in a
        # few rounds (each round adds only the rejected images among the previous round's units).
        n = cls.target + count
        while True:
            units = compile_class(loaded, replace(cls, target=n), models)
            count = _rejected_among(units, rejected)
            if cls.target + count <= n:
                break
            n = cls.target + count
        out[name] = units
        counts[name] = TopUp(count, n - cls.target)
    return out, counts
