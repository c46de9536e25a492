"""The loader's output records: every default applied, every file read. What the compiler reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from diffspec.spec.model import Scalar


@dataclass(frozen=True, slots=True)
class ResolvedParams:
    """The generation parameters of a class after layering (built-in < spec defaults < model
    defaults < class). The built-in values live on `diffspec.spec.model.Defaults`, not here."""

    model: str
    mode: str
    size: tuple[int, int]
    steps: int
    guidance: float
    negative: str
    seed: int
    strength: float
    scheduler: str
    scheduler_kwargs: tuple[tuple[str, Scalar], ...]
    conditioning_scale: float


# Sweep values are written in YAML as plain numbers and lists: give them the parameter's type.
_SWEEP_TYPES: dict[str, Callable[[Any], Any]] = {
    "size": lambda v: (int(v[0]), int(v[1])),
    "steps": int,
    "guidance": float,
    "strength": float,
    "scheduler": str,
}


@dataclass(frozen=True, slots=True)
class InputFile:
    path: str  # absolute
    sha256: str
    mask_path: str | None = None
    mask_sha256: str | None = None


@dataclass(frozen=True)
class ResolvedClass:
    """A class with every default applied and every file read: the compiler's input."""

    name: str
    params: ResolvedParams
    templates: tuple[str, ...]
    variables: dict[str, tuple[str, ...]]
    expand: str
    sweep: dict[str, tuple[Any, ...]]
    target: int
    seeds: tuple[int, ...] | None
    seed_key: str
    inputs: tuple[InputFile, ...]
    control: str | None
    canny: tuple[int, int]
    label: str
    description: str | None
    existing_count: int | None = None
    fill_to: int | None = None
    existing_folder: str | None = None  # absolute: fill_to counts it, near_duplicate compares with it
    replace_rejected: bool = False  # plan new units for the class's rejected images
    # A swept model is taken whole: its own scheduler, scheduler kwargs and defaults, resolved
    # with the same precedence as `params` (the class's explicit settings still win).
    model_params: Mapping[str, ResolvedParams] = field(default_factory=dict)

    def params_for(self, overrides: Mapping[str, Any]) -> ResolvedParams:
        """The parameters of one sweep combination: the swept model's own parameters, then the
        other swept values on top."""
        base = self.model_params[overrides["model"]] if "model" in overrides else self.params
        changes = {k: _SWEEP_TYPES[k](v) for k, v in overrides.items() if k != "model"}
        return replace(base, **changes) if changes else base
