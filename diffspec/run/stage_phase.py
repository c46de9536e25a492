"""The stage phase of `apply`: after the images, each planned stage runs its units.

`apply` holds the output lock, the signal handlers and the run record for the whole run, so
the stages run inside it, in the plan's order, once the image batches are done. What runs a
stage's units (its models) lives above this layer, in :mod:`diffspec.stages`; `apply` receives
the runners as a mapping from stage name to :class:`StageRunner` (``Project.apply`` passes
:func:`diffspec.stages.registry.stage_runners`). A plan with a stage that has no runner is an
error before any work, never a stage skipped in silence.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from diffspec.catalog.store import Catalog
from diffspec.errors import PlanError
from diffspec.run.events import RunEvent


@dataclass(frozen=True)
class StageContext:
    """What a stage runner gets from the run."""

    output: Path
    catalog: Catalog
    run_id: str
    device: str  # "cpu" or "cuda:0": the run's first device
    stop: threading.Event  # set by Ctrl-C / SIGTERM: finish the batch in hand, then return
    note: Callable[[str], None] = field(default=lambda _message: None)  # a line for the progress view


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    made: int  # units recorded by this run
    failed: int  # units whose batch raised (recorded as events; made again by the next apply)
    waiting: int  # units whose image is not in the catalog (it failed or was not made)
    seconds: float
    interrupted: bool = False
    events: tuple[RunEvent, ...] = ()
    filters: tuple[tuple[str, int, int], ...] = ()  # the filters stage: (filter, checked, rejected)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "made": self.made,
            "failed": self.failed,
            "waiting_for_images": self.waiting,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
        }
        if self.filters:
            out["filters"] = [{"filter": f, "checked": c, "rejected": r} for f, c, r in self.filters]
        return out


class StageRunner(Protocol):
    def __call__(self, stage: Any, context: StageContext) -> StageOutcome:
        """Run ``stage``'s units to create (a stage plan, e.g. `SegmentPlan`), batch by batch,
        each batch recorded atomically before the next starts."""


def check_runners(stages: tuple[Any, ...], runners: Mapping[str, StageRunner]) -> None:
    missing = [s.stage for s in stages if s.total_create and s.stage not in runners]
    if missing:
        raise PlanError(
            f"the plan runs the stage(s) {', '.join(missing)}, and no runner for them was given: "
            "apply through diffspec.Project (or pass stage_runners=diffspec.stages.registry.stage_runners())"
        )
