"""Model backends behind one small interface.

``import diffspec.generate`` imports nothing heavy: the torch-free tables the planner uses
live below it, in :mod:`diffspec.tables` (families, scheduler names and table entries, model
sources), plus :mod:`diffspec.generate.prompts`; everything that needs torch/diffusers
(:class:`Backend`, :func:`load_pipeline`, :func:`build_tiny`, ...) is imported on first use.

The runner's interface::

    backend = Backend(unit.key, device="cpu", strategy="none")
    for image in backend.generate(units_sharing_one_key):
        ...  # image.fingerprint, image.image (PIL, RGB), image.seconds
    backend.scheduler_config(unit.key)  # the scheduler config to record in the catalog
    backend.close()
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Backend",
    "GeneratedImage",
    "load_pipeline",
    "build_tiny",
    "apply_strategy",
    "escalate",
    "is_out_of_memory",
    "make_scheduler",
    "scheduler_table_entry",
    "guess_family",
    "pipeline_class_name",
]

_LAZY = {
    "Backend": "diffspec.generate.backend",
    "GeneratedImage": "diffspec.generate.backend",
    "load_pipeline": "diffspec.generate.loading",
    "build_tiny": "diffspec.generate.tiny",
    "apply_strategy": "diffspec.generate.memory",
    "escalate": "diffspec.generate.memory",
    "is_out_of_memory": "diffspec.generate.memory",
    "make_scheduler": "diffspec.generate.schedulers",
    "scheduler_table_entry": "diffspec.tables.schedulers",
    "guess_family": "diffspec.tables.families",
    "pipeline_class_name": "diffspec.tables.families",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
