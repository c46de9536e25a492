"""Save a plan to JSON (`plan --out plan.json`) and load it back for `apply plan.json`.

The file records the spec's content hash, the catalog state, the fingerprints to create and
remove, and the execution decisions (executor, devices, memory strategy and batch size per
pipeline group). Loading re-compiles the spec (a pure function) and refuses if the spec changed,
or if the catalog changed in any way other than by images of this very plan (a resumed apply).
The execution decisions are taken from the file, never made again on the loading machine:
a plan approved in CI runs as approved (`apply` checks the machine against them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffspec.atomic import atomic_write_bytes
from diffspec.catalog.store import Catalog
from diffspec.errors import PlanError
from diffspec.plan.diff import Plan, build_plan
from diffspec.plan.execution import ExecutionPlan
from diffspec.plan.render import plan_to_dict
from diffspec.spec.loader import load_spec

FORMAT = "diffspec-plan/2"
OLDER_FORMATS = ("diffspec-plan/1",)


def plan_file_dict(plan: Plan) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "spec_path": str(Path(plan.spec_path).resolve()),
        "profile": plan.profile,
        "spec_hash": plan.spec_hash,
        "catalog_state": plan.catalog_state,
        "output": plan.output,
        "summary": plan_to_dict(plan),
        "create": {
            name: [plan.units[name].fingerprints[i] for i in idx.tolist()] for name, idx in plan.create_index.items()
        },
        "remove": [r.fingerprint for r in plan.removals],
        "execution": plan.execution.to_dict(),
        "stage_create": {stage.stage: [u.fingerprint for u in stage.create] for stage in plan.stages},
    }


def save_plan(plan: Plan, path: Path) -> None:
    atomic_write_bytes(Path(path), json.dumps(plan_file_dict(plan), indent=1).encode("utf-8"))


def is_plan_file(path: Path) -> bool:
    if Path(path).suffix.lower() != ".json":
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(200)
        return FORMAT in head or any(old in head for old in OLDER_FORMATS)
    except OSError:
        return False


def load_plan(path: Path) -> Plan:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read plan file {path}: {exc}") from None
    if isinstance(data, dict) and data.get("format") in OLDER_FORMATS:
        raise PlanError(
            f"{path} was saved by an older diffspec ({data['format']}, without execution decisions); "
            "run `diffspec plan --out` again"
        )
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PlanError(f"{path} is not a diffspec plan file (expected format {FORMAT})")
    loaded = load_spec(data["spec_path"], profile=data.get("profile"))
    if loaded.content_hash != data["spec_hash"]:
        raise PlanError(f"the spec {data['spec_path']} changed since {path} was made; run `diffspec plan` again")
    if not isinstance(data.get("execution"), dict):
        raise PlanError(f"{path} has no execution section; run `diffspec plan --out` again")
    plan = build_plan(loaded, Catalog(loaded.output), execution=ExecutionPlan.from_dict(data["execution"]))
    planned = {fp for fps in data["create"].values() for fp in fps}
    now = {plan.units[n].fingerprints[i] for n, idx in plan.create_index.items() for i in idx.tolist()}
    if plan.catalog_state != data["catalog_state"]:
        # Only images this plan makes may have appeared (a resumed apply); anything else is a change.
        unexpected = now - planned
        removed = {r.fingerprint for r in plan.removals} - set(data["remove"])
        if unexpected or removed:
            raise PlanError(
                f"the catalog under {loaded.output} changed since {path} was made "
                f"({len(unexpected)} more to create, {len(removed)} more to remove); run `diffspec plan` again"
            )
    elif now != planned:
        raise PlanError(
            f"{path} no longer matches what the spec compiles to (diffspec version change?); run `diffspec plan` again"
        )
    saved_stages = data.get("stage_create", {})
    for stage in plan.stages:
        # As for images: only units of this plan may have been made since (a resumed apply).
        extra = {u.fingerprint for u in stage.create} - set(saved_stages.get(stage.stage, ()))
        if extra:
            raise PlanError(
                f"the {stage.stage} stage of {path} no longer matches the spec and the catalog "
                f"({len(extra)} units it did not plan); run `diffspec plan` again"
            )
    return plan
