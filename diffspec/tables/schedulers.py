"""Our scheduler names and the table from them to a diffusers class plus kwargs. Torch-free.

The spec validates names against :data:`SCHEDULER_NAMES`; the planner puts
:func:`scheduler_entry` into every fingerprint, so editing an entry re-plans exactly the units
it affects; :mod:`diffspec.generate.schedulers` builds the scheduler from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from diffspec.errors import GenerationError


@dataclass(frozen=True, slots=True)
class SchedulerEntry:
    class_name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    flow_matching: bool = False


#: Our scheduler names → diffusers class + kwargs. ``default`` keeps the pipeline's own.
#: The A1111 names in comments are the usual equivalents.
SCHEDULER_TABLE: dict[str, SchedulerEntry | None] = {
    "default": None,
    "ddpm": SchedulerEntry("DDPMScheduler"),
    "ddim": SchedulerEntry("DDIMScheduler"),
    "pndm": SchedulerEntry("PNDMScheduler"),
    "lms": SchedulerEntry("LMSDiscreteScheduler"),  # LMS
    "euler": SchedulerEntry("EulerDiscreteScheduler"),  # Euler
    "euler_a": SchedulerEntry("EulerAncestralDiscreteScheduler"),  # Euler a
    "heun": SchedulerEntry("HeunDiscreteScheduler"),  # Heun
    "dpmpp_2m": SchedulerEntry(  # DPM++ 2M
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "dpmpp_2m_karras": SchedulerEntry(  # DPM++ 2M Karras
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    # DPM++ 2M SDE. (DPMSolverSDEScheduler would need the extra `torchsde` package.)
    "dpmpp_sde": SchedulerEntry(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    ),
    "unipc": SchedulerEntry("UniPCMultistepScheduler"),  # UniPC
    "flow_euler": SchedulerEntry("FlowMatchEulerDiscreteScheduler", flow_matching=True),
}


def scheduler_names() -> tuple[str, ...]:
    return tuple(SCHEDULER_TABLE)


def scheduler_table_entry(name: str) -> tuple[str | None, dict[str, Any]]:
    """``(class_name, kwargs)`` of a scheduler name; ``(None, {})`` for ``default``. Torch-free."""
    try:
        entry = SCHEDULER_TABLE[name]
    except KeyError:
        raise GenerationError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULER_TABLE)}") from None
    if entry is None:
        return None, {}
    return entry.class_name, dict(entry.kwargs)


#: Every scheduler name a spec may use, in table order.
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULER_TABLE)


def scheduler_entry(name: str) -> str:
    """The table entry our scheduler name stands for, as canonical JSON (part of the fingerprint)."""
    class_name, kwargs = scheduler_table_entry(name)
    return json.dumps([class_name, kwargs], sort_keys=True, separators=(",", ":"))
