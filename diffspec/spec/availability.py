"""Spec keys that the schema knows but this version cannot run yet: refused, with a position.

A key that validates and is then ignored would tell the user that captions or masks are being
made when none are. So until a stage runs, a spec that asks for it is invalid, and the message
says which release brings it. (The schema keeps the keys, so editors and `diffspec schema`
already describe them.)
"""

from __future__ import annotations

from diffspec.errors import Problem
from diffspec.spec.model import Spec
from diffspec.spec.yamlio import Positions

NEXT_RELEASE = "0.2"
_NOT_YET: dict[str, str] = {}
_FILTERS_NOT_YET: dict[str, str] = {}


def check_available(spec: Spec, positions: Positions, problems: list[Problem]) -> None:
    stages = spec.stages
    for key, what in _NOT_YET.items():
        if getattr(stages, key) is not None:
            problems.append(Problem(positions.at(("stages", key)), _message(f"stages.{key}", what)))
    for i, entry in enumerate(stages.filters):
        for key, what in _FILTERS_NOT_YET.items():
            if getattr(entry, key) is not None:
                problems.append(Problem(positions.at(("stages", "filters", i, key)), _message(key, what)))


def _message(key: str, what: str) -> str:
    return (
        f"`{key}` ({what}) does not run in this version of diffspec; it arrives in {NEXT_RELEASE}. "
        "Remove it for now: a spec key that validates must also do something"
    )
