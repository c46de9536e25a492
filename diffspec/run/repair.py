"""`diffspec check SPEC [--repair]`: report damage, and rebuild what the image files still hold.

Repair runs under the output lock (never beside an apply) and in this order:

1. damaged catalog parts move to ``catalog/quarantine/`` (kept for inspection, never deleted);
2. rows whose image file is missing or damaged are tombstoned, and a damaged file moves to
   quarantine too, so the plan lists those units to make again;
3. whole images of the spec's units that have no row (e.g. their part was quarantined) are
   recorded from their PNG provenance, exactly as `apply` adopts a killed run's images
   (diffspec.run.adopt): complete PNG, its fingerprint in the provenance, its size;
4. what is truly lost is left for the next `apply`, which the result counts.

It lives in ``run/`` rather than ``catalog/`` because rebuilding rows needs the plan's units and
the adoption logic; ``catalog/check.py`` holds the scanning and the quarantine.
A quarantined ``runs`` part loses only run history; a quarantined stage part is recomputed by
the next apply's stages (they run over images that lack their output); a quarantined
``removed`` part may bring rows of deleted images back: their files are gone, so step 2 of the
next repair (or this one, since tombstones are read first) tombstones them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffspec.catalog.check import DAMAGED_IMAGE, DAMAGED_PART, MISSING_IMAGE, Damage, Scan, quarantine, scan
from diffspec.catalog.lock import OutputLock
from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog, new_run_id
from diffspec.spec.loader import LoadedSpec


@dataclass(frozen=True)
class CheckResult:
    output: Path
    damages: tuple[Damage, ...]
    parts: int
    images: int
    adoptable: int  # whole images of the spec's units on disk without a row
    repaired: bool = False
    quarantined: tuple[str, ...] = ()
    tombstoned: int = 0
    adopted: int = 0
    to_make: int | None = None  # after a repair: what the next apply makes
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.damages and not self.adoptable

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "ok": self.ok,
            "parts_checked": self.parts,
            "images_checked": self.images,
            "problems": [d.to_dict() for d in self.damages],
            "unrecorded_images": self.adoptable,
            "repaired": self.repaired,
            "quarantined": list(self.quarantined),
            "tombstoned": self.tombstoned,
            "adopted": self.adopted,
            "to_make": self.to_make,
            "notes": list(self.notes),
        }


def _adopt(loaded: LoadedSpec, catalog: Catalog, run_id: str, write: bool) -> int:
    from diffspec.plan.diff import build_plan
    from diffspec.run.adopt import adopt_orphans
    from diffspec.run.writer import ImageWriter

    plan = build_plan(loaded, catalog)
    units = list(plan.units_to_create())
    if not units:
        return 0
    labels = {name: u.label for name, u in plan.units.items()}
    writer = ImageWriter(catalog.output, run_id, plan.dataset, labels, "unknown")
    rows: list[ImageRecord] = []

    def record(batch: list[ImageRecord]) -> list[ImageRecord]:
        rows.extend(batch)
        if write:
            catalog.append_images(batch, run_id)
        return batch

    return len(adopt_orphans(units, catalog.output, writer, record))


def check(loaded: LoadedSpec, repair: bool = False, hashed: bool = True) -> CheckResult:
    output = loaded.output
    catalog = Catalog(output)
    if not repair:
        found = scan(catalog, hashed)
        readable = Catalog(output, skip_parts={output / d.path for d in found.of(DAMAGED_PART)})
        adoptable = _adopt(loaded, readable, "check", write=False) if catalog.exists() else 0
        return CheckResult(output, found.damages, found.parts, found.images, adoptable)
    run_id = new_run_id()
    with OutputLock(output, run_id, command="check --repair"):
        return _repair(loaded, catalog, run_id, scan(catalog, hashed))


def _repair(loaded: LoadedSpec, catalog: Catalog, run_id: str, found: Scan) -> CheckResult:
    from diffspec.plan.diff import build_plan

    output = catalog.output
    catalog.clean_leftovers()
    moved = quarantine(catalog, [output / d.path for d in found.of(DAMAGED_PART)])
    lost = found.of(MISSING_IMAGE) + found.of(DAMAGED_IMAGE)
    root = output.resolve()
    damaged_files = [
        output / d.path
        for d in found.of(DAMAGED_IMAGE)
        if d.path and (output / d.path).resolve().is_relative_to(root) and (output / d.path).is_file()
    ]
    moved += quarantine(catalog, damaged_files)
    # Tombstones before anything else reads the catalog again: the units become work to do.
    catalog.tombstone([(d.fingerprint, d.path) for d in lost if d.fingerprint], run_id)
    adopted = _adopt(loaded, catalog, run_id, write=True)
    to_make = sum(1 for _ in build_plan(loaded, catalog).units_to_create())
    notes = []
    if any("runs part" in d.detail for d in found.of(DAMAGED_PART)):
        notes.append("a runs part was quarantined: the history of those runs is gone, their images are not")
    if any(d.detail.split(" ")[0] not in ("images", "runs", "removed") for d in found.of(DAMAGED_PART)):
        notes.append("a stage part was quarantined: the next apply runs that stage again over the images it lacks")
    return CheckResult(
        output,
        found.damages,
        found.parts,
        found.images,
        adoptable=adopted,
        repaired=True,
        quarantined=tuple(str(p.relative_to(output)) for p in moved),
        tombstoned=len(lost),
        adopted=adopted,
        to_make=to_make,
        notes=tuple(notes),
    )


def render_check(result: CheckResult, console: Any) -> None:
    from rich.markup import escape

    console.print(
        f"checked {result.parts} catalog part{'s' if result.parts != 1 else ''} and "
        f"{result.images} image{'s' if result.images != 1 else ''} under {escape(str(result.output))}",
        highlight=False,
    )
    for d in result.damages:
        console.print(f"  [red]{d.kind}[/] {escape(d.path)}: {escape(d.detail)}", highlight=False)
    if result.adoptable and not result.repaired:
        console.print(
            f"  [yellow]unrecorded[/] {result.adoptable} whole image{'s' if result.adoptable != 1 else ''} "
            "of this spec have no catalog row (--repair records them)",
            highlight=False,
        )
    if result.repaired:
        console.print(
            f"repaired: {len(result.quarantined)} file{'s' if len(result.quarantined) != 1 else ''} moved to "
            f"catalog/quarantine/, {result.tombstoned} row{'s' if result.tombstoned != 1 else ''} of lost images "
            f"dropped, {result.adopted} image{'s' if result.adopted != 1 else ''} recorded from their files; "
            f"the next apply makes {result.to_make}",
            highlight=False,
        )
        for note in result.notes:
            console.print(f"note: {escape(note)}", highlight=False)
    elif result.ok:
        console.print("[green]no problems[/]")
    else:
        console.print(
            f"[red]{len(result.damages)} problem{'s' if len(result.damages) != 1 else ''}[/]; "
            "`diffspec check SPEC --repair` quarantines damaged files and rebuilds what the images hold",
            highlight=False,
        )
