"""The planner's view of models and schedulers: torch-free look-ups in generate's tables."""

from __future__ import annotations

import json

from diffspec.generate.families import guess_family
from diffspec.generate.schedulers import scheduler_table_entry


def resolve_family(source: str, family: str) -> str:
    return family if family != "auto" else guess_family(source)


def scheduler_entry(name: str) -> str:
    """The table entry our scheduler name stands for, as canonical JSON (part of the fingerprint)."""
    class_name, kwargs = scheduler_table_entry(name)
    return json.dumps([class_name, kwargs], sort_keys=True, separators=(",", ":"))
