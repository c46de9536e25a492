"""Find damage under an output root: catalog parts that do not read, and image files that are
missing or are not what their row says.

Readers (`plan`, `status`, `query`, `apply`, `export`) refuse a damaged part with an error
naming it rather than read around it: a skipped images part would look like missing images
and silently cost a regeneration; a skipped ``removed`` part would bring deleted images back.
This module finds every problem at once (`diffspec check`), and moves damaged files aside
(quarantine, never delete) for `diffspec check --repair` (diffspec.run.repair).

Checks, per kind of damage:

* ``damaged_part``: a Parquet part that does not read whole (truncated, garbage bytes, a page
  checksum that fails) or lacks its table's key column;
* ``missing_image``: a live row whose file is gone;
* ``damaged_image``: a live row whose file has another size or sha256 (garbage, a torn copy),
  or whose path points outside the output root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from diffspec.atomic import fsync_dir
from diffspec.catalog.schema import TABLES
from diffspec.catalog.store import QUARANTINE_DIR, Catalog, part_problem

DAMAGED_PART = "damaged_part"
MISSING_IMAGE = "missing_image"
DAMAGED_IMAGE = "damaged_image"


@dataclass(frozen=True)
class Damage:
    """One problem found, with the file it is in (relative to the output root)."""

    kind: str
    path: str
    detail: str
    fingerprint: str | None = None  # for image problems: the row's unit

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "path": self.path, "detail": self.detail, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Scan:
    damages: tuple[Damage, ...]
    parts: int  # parts read
    images: int  # live rows whose files were checked
    hashed: bool  # sha256 of every file compared, not only its size

    def of(self, kind: str) -> list[Damage]:
        return [d for d in self.damages if d.kind == kind]


def _tables(catalog: Catalog) -> list[str]:
    return ["images", "runs", "removed", *catalog.stages()]


def damaged_parts(catalog: Catalog) -> tuple[list[Damage], int]:
    damages: list[Damage] = []
    count = 0
    for table in _tables(catalog):
        for part in catalog.parts(table):
            count += 1
            why = part_problem(part, TABLES.get(table))
            if why is not None:
                damages.append(Damage(DAMAGED_PART, catalog.shown(part), f"{table} part {why}"))
    return damages, count


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def image_damage(catalog: Catalog, hashed: bool = True) -> tuple[list[Damage], int]:
    """Live rows whose file is missing or differs from the row. ``hashed=False`` compares only
    sizes (a stat per image: cheap enough for `status`)."""
    root = catalog.output.resolve()
    rows = catalog.live_images(["fingerprint", "path", "sha256", "bytes"])
    damages: list[Damage] = []
    for fp, rel, sha, size in zip(*(rows.column(c).to_pylist() for c in ("fingerprint", "path", "sha256", "bytes"))):
        rel = rel or ""
        target = (root / rel).resolve()
        if not rel or not target.is_relative_to(root) or target == root:
            damages.append(
                Damage(DAMAGED_IMAGE, rel, f"the row's path resolves to {target}, outside the output root", fp)
            )
            continue
        try:
            st = target.stat()
        except FileNotFoundError:
            damages.append(Damage(MISSING_IMAGE, rel, "the file is gone", fp))
            continue
        except OSError as exc:
            damages.append(Damage(DAMAGED_IMAGE, rel, f"cannot stat: {exc.strerror}", fp))
            continue
        if not os.path.isfile(target):
            damages.append(Damage(DAMAGED_IMAGE, rel, "not a regular file", fp))
        elif size is not None and st.st_size != size:
            damages.append(Damage(DAMAGED_IMAGE, rel, f"{st.st_size} bytes, the row says {size}", fp))
        elif hashed and sha and _sha256(target) != sha:
            damages.append(Damage(DAMAGED_IMAGE, rel, "sha256 differs from the row's", fp))
    return damages, rows.num_rows


def scan(catalog: Catalog, hashed: bool = True) -> Scan:
    """Every damaged part, then every image problem of the rows the readable parts hold."""
    if not catalog.exists():
        return Scan((), 0, 0, hashed)
    parts, nparts = damaged_parts(catalog)
    readable = Catalog(catalog.output, skip_parts={catalog.output / d.path for d in parts})
    images, nimages = image_damage(readable, hashed)
    return Scan(tuple(parts + images), nparts, nimages, hashed)


def quarantine(catalog: Catalog, paths: Iterable[Path]) -> list[Path]:
    """Move files under ``catalog/quarantine/`` keeping their path below the output root; never
    overwrite an earlier quarantined file. Returns where they went."""
    moved: list[Path] = []
    base = catalog.root / QUARANTINE_DIR
    touched: set[Path] = set()
    for path in paths:
        path = Path(path)
        rel = path.resolve().relative_to(catalog.output.resolve())
        if rel.parts[:1] == (catalog.root.name,):
            rel = Path(*rel.parts[1:])
        target = base / rel
        n = 1
        while target.exists():
            target = base / rel.with_name(f"{rel.name}.{n}")
            n += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, target)  # same filesystem: atomic
        except OSError:
            shutil.move(str(path), str(target))
        touched.update((path.parent, target.parent))
        moved.append(target)
    for folder in touched:
        fsync_dir(folder)
    return moved
