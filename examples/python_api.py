"""Use diffspec from Python: the CLI is a thin layer over this same API.

python examples/python_api.py
"""

from __future__ import annotations

from pathlib import Path

import diffspec
from diffspec.plan.render import render_json

SPEC = Path(__file__).resolve().parent.parent / "specs" / "quickstart.yaml"


def main() -> None:
    # Validate several specs at once: errors come back as data, with file:line:column.
    for result in diffspec.validate([SPEC]):
        print("ok" if result.ok else result.error, result.path)

    project = diffspec.Project(SPEC, profile="tiny")
    plan = project.plan()  # no GPU, no torch import
    print(render_json(plan)[:400], "...")
    print(f"{plan.total_create} images to make, {plan.total_keep} up to date")

    # Each unit knows its full identity: prompt, seed and fingerprint.
    first = next(plan.units_to_create(), None)
    if first is not None:
        print(first.class_name, first.seed, repr(first.prompt), first.fingerprint[:12])

    result = project.apply(plan)  # generates, records each batch, runs the filters
    print(result.to_dict())

    table = project.query("SELECT class_name, count(*) AS images FROM images GROUP BY 1 ORDER BY 1")
    print(table.to_pylist())


if __name__ == "__main__":
    main()
