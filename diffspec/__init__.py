"""diffspec: declarative, versioned, reproducible synthetic image datasets from diffusion models.

`import diffspec` is light: torch, diffusers, transformers and ray load only when something
generates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DiffspecError", "Plan", "Project", "SpecError", "load_spec", "validate", "__version__"]

if TYPE_CHECKING:
    from diffspec.errors import DiffspecError, SpecError
    from diffspec.plan.diff import Plan
    from diffspec.project import Project, validate
    from diffspec.spec.loader import load_spec

_LAZY = {
    "DiffspecError": "diffspec.errors",
    "SpecError": "diffspec.errors",
    "Plan": "diffspec.plan.diff",
    "Project": "diffspec.project",
    "validate": "diffspec.project",
    "load_spec": "diffspec.spec.loader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffspec' has no attribute {name!r}")
