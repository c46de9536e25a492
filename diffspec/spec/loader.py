"""Load a spec file: YAML with positions → profile overlay → pydantic → semantic checks → resolved spec.

Everything here reads files (the spec, var files, input images, existing folders) but never
imports torch. The result, `LoadedSpec`, is what the pure compiler consumes. The jobs live in
their own modules: value sources (`sources`), profiles (`profiles`), resolution and semantic
checks (`resolve`), setting aside invalid parts so every problem shows in one run (`salvage`);
the records are in `resolved`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from diffspec.errors import Problem, SpecError
from diffspec.spec import weights
from diffspec.spec.errors_map import problems_from_validation
from diffspec.spec.model import Spec
from diffspec.spec.profiles import apply_profile
from diffspec.spec.resolve import BUILTIN_VARS, PLACEHOLDER, placeholders, resolve
from diffspec.spec.resolved import InputFile, ResolvedClass, ResolvedParams
from diffspec.spec.salvage import salvage
from diffspec.spec.sources import (
    IMAGE_SUFFIXES,
    collapse_template_problems,
    count_images,
    expand_classes_from,
    shown_path,
)
from diffspec.spec.yamlio import Positions, load_yaml_file

__all__ = [
    "BUILTIN_VARS",
    "IMAGE_SUFFIXES",
    "PLACEHOLDER",
    "InputFile",
    "LoadedSpec",
    "ResolvedClass",
    "ResolvedParams",
    "count_images",
    "load_spec",
    "placeholders",
    "shown_path",
    "spec_files",
]


@dataclass(frozen=True)
class LoadedSpec:
    path: Path
    spec: Spec
    profile: str | None
    root: Path  # folder of the spec file: relative paths start here
    output: Path  # absolute output root
    classes: dict[str, ResolvedClass]
    content_hash: str  # changes whenever anything that could change the plan changes
    positions: Positions = field(repr=False, compare=False)


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def load_spec(path: str | Path, profile: str | None = None) -> LoadedSpec:
    """Load, validate and resolve a spec file. Raises `SpecError` listing every problem found."""
    spec_path = Path(path)
    data, positions = load_yaml_file(spec_path)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {_yaml_kind(data)}"
        raise SpecError(
            [
                Problem(
                    positions.at(()),
                    f"a spec must be a mapping of keys (version, dataset, models, classes, ...), got {got}",
                )
            ]
        )
    root = spec_path.resolve().parent
    data = apply_profile(data, positions, profile)
    problems: list[Problem] = []
    made = expand_classes_from(data, positions, root, problems)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems += problems_from_validation(exc, data, positions, Spec)
        partial = salvage(data, exc)
        if partial is not None:  # the semantic problems of the valid rest, in the same run
            resolve(partial[0], root, positions, problems, broken_models=partial[1])
        raise SpecError(collapse_template_problems(problems, made)) from None
    output = (root / spec.output).resolve()
    classes = resolve(spec, root, positions, problems, output=output)
    problems.extend(weights.model_problems(spec, root, positions))
    if problems:
        raise SpecError(collapse_template_problems(problems, made))
    if output == root or root.is_relative_to(output):
        raise SpecError(
            [
                Problem(
                    positions.at(("output",)),
                    f"output {spec.output!r} would hold the spec's own folder; choose a subfolder such as data/{spec.dataset}",
                )
            ]
        )
    content = {
        "spec": spec.model_dump(mode="json", exclude={"profiles"}),
        "profile": profile,
        "classes": {
            n: {"target": c.target, "variables": c.variables, "inputs": [[i.sha256, i.mask_sha256] for i in c.inputs]}
            for n, c in classes.items()
        },
    }
    content_hash = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return LoadedSpec(spec_path, spec, profile, root, output, classes, content_hash, positions)


def spec_files(targets: list[str | Path]) -> list[Path]:
    """Spec files named directly, or every *.yaml / *.yml inside named folders."""
    files: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            files.append(path)
    return files
