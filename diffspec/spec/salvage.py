"""Set aside what failed validation, so the semantic checks can run on the rest of the spec.

A user fixing a spec should see every problem in one run: a wrong type in one class and an
unknown model in another are both reported, not the second only after the first is fixed.
Setting aside must never invent a problem, so only what cannot cause one is dropped: a
parameter whose absence is harmless (`steps`, `seed`, ...), a whole class, a whole model
(references to it are then not reported again), an unknown top-level key. Where a part cannot
be set aside safely (the spec's default model, the `models` mapping itself, ...) the semantic
checks are skipped and the schema problems stand alone.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from diffspec.spec.errors_map import _data_path
from diffspec.spec.model import Spec
from diffspec.spec.yamlio import PathT

# Parameters whose value takes part in no semantic check: dropping one cannot cause a problem.
_HARMLESS = frozenset({"steps", "guidance", "negative", "seed", "strength", "conditioning_scale", "scheduler_kwargs"})
_HARMLESS_IN_CLASS = _HARMLESS | {"label", "description", "seed_key", "sweep", "expand"}
# Top-level keys no semantic check of classes reads: replaced by their defaults.
_INDEPENDENT = frozenset({"budget", "stages", "output", "description", "profiles"})
_PLACEHOLDER_VALUES = ["?"]
_ROUNDS = 4


def salvage(data: dict[str, Any], exc: ValidationError) -> tuple[Spec, frozenset[str]] | None:
    """The spec without the parts that failed, and the names of the models set aside; None when
    what failed cannot be set aside without risking false problems."""
    work = copy.deepcopy(data)
    broken_models: set[str] = set()
    dropped: set[tuple[str, str]] = set()
    for _ in range(_ROUNDS):
        paths = [_data_path(tuple(error["loc"]), work)[0] for error in exc.errors(include_url=False)]
        for path in paths:
            if path[:2] in dropped:
                continue  # a second problem of a class or model already set aside
            if not _set_aside(work, path, broken_models, dropped):
                return None
        if not work.get("classes"):
            return None  # "no classes" would repeat a schema problem (e.g. a misspelt `classes`)
        try:
            return Spec.model_validate(work), frozenset(broken_models)
        except ValidationError as again:
            exc = again
    return None


def _set_aside(work: dict[str, Any], path: PathT, broken_models: set[str], dropped: set[tuple[str, str]]) -> bool:
    if not path:
        return False
    head = path[0]
    if head == "version":
        work["version"] = 1
        return True
    if head == "dataset":
        work["dataset"] = "dataset"  # read by no semantic check
        return True
    if head in _INDEPENDENT or (isinstance(head, str) and head not in Spec.model_fields):
        work.pop(head, None)
        return True
    if head == "classes_from":
        work.pop(head, None)  # its rows are already classes; without any, "no classes" would be false
        return bool(work.get("classes"))
    if head == "models":
        return _drop_entry(work, path, broken_models, dropped)
    if head == "classes":
        return _set_aside_in_class(work, path, dropped)
    if head == "vars":
        return _placeholder_var(work.get("vars"), path[1:])
    if head == "defaults":
        defaults = work.get("defaults")
        if len(path) >= 2 and path[1] in _HARMLESS and isinstance(defaults, dict):
            defaults.pop(path[1], None)
            return True
    return False


def _drop_entry(work: dict[str, Any], path: PathT, broken: set[str], dropped: set[tuple[str, str]]) -> bool:
    models = work.get("models")
    if len(path) < 2 or not isinstance(models, dict) or path[1] not in models:
        return False
    del models[path[1]]
    broken.add(str(path[1]))
    dropped.add(("models", str(path[1])))
    return bool(models)


def _set_aside_in_class(work: dict[str, Any], path: PathT, dropped: set[tuple[str, str]]) -> bool:
    classes = work.get("classes")
    if len(path) < 2 or not isinstance(classes, dict) or path[1] not in classes:
        return False
    cls = classes[path[1]]
    if isinstance(cls, dict) and len(path) >= 3:
        key = path[2]
        if key == "vars" and _placeholder_var(cls.get("vars"), path[3:]):
            return True
        if key == "target" and "fill_to" not in cls:
            cls["target"] = 0
            return True
        if key in _HARMLESS_IN_CLASS:
            cls.pop(key, None)
            return True
    del classes[path[1]]  # the whole class: its other checks wait for the fix
    dropped.add(("classes", str(path[1])))
    return bool(classes)  # with none left, "the spec defines no classes" would be false


def _placeholder_var(variables: Any, rest: PathT) -> bool:
    """A var that failed keeps its name (so templates using it are not reported as undefined)."""
    if not isinstance(variables, dict) or not rest or rest[0] not in variables:
        return False
    variables[rest[0]] = list(_PLACEHOLDER_VALUES)
    return True
