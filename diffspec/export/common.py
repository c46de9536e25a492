"""What every export format shares: which images go out, and how files land under ``dest``.

Selection: the catalog's live images (first row per fingerprint, tombstones dropped) that the
spec still asks for (not in the plan's ``remove`` list, class still in the spec), without the
images that are rejected (a person's review decision, else the latest verdict of any filter;
see :mod:`diffspec.catalog.verdicts`), unless asked to include them.

Writing: see :mod:`diffspec.export.dest` (atomic, confined under ``dest``, hard-linked when
possible, nothing rewritten that matches, and no file diffspec did not write is ever
overwritten or deleted). Splits: see :mod:`diffspec.export.split`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffspec.catalog.store import CATALOG_DIR, Catalog
from diffspec.catalog.verdicts import rejected_fingerprints
from diffspec.errors import ExportError
from diffspec.export.dest import inside
from diffspec.export.split import TRAIN, Split
from diffspec.spec.loader import LoadedSpec
from diffspec.spec.model import NAME_PATTERN

# Provenance columns every format writes, in this order, after its own file column.
COLUMNS = (
    "class",
    "label",
    "prompt",
    "negative_prompt",
    "seed",
    "model_source",
    "model_revision",
    "scheduler",
    "steps",
    "guidance",
    "width",
    "height",
    "fingerprint",
    "sha256",
    "rejected",
)
_CATALOG_COLUMNS = [
    "fingerprint",
    "class_name",
    "label",
    "unit_index",
    "prompt",
    "negative_prompt",
    "seed",
    "model_source",
    "model_revision",
    "scheduler",
    "steps",
    "guidance",
    "width",
    "height",
    "path",
    "sha256",
    "bytes",
]


@dataclass(frozen=True)
class ExportRow:
    """One image to export: its provenance and where its file is."""

    fingerprint: str
    class_name: str
    label: str | None
    prompt: str | None
    negative_prompt: str | None
    seed: int | None
    model_source: str | None
    model_revision: str | None
    scheduler: str | None
    steps: int | None
    guidance: float | None
    width: int | None
    height: int | None
    sha256: str | None
    source: Path  # absolute, inside the output root
    rejected: bool

    @property
    def suffix(self) -> str:
        return self.source.suffix or ".png"

    def provenance(self) -> dict[str, Any]:
        values = {"class": self.class_name, **{c: getattr(self, c) for c in COLUMNS if c != "class"}}
        return {c: values[c] for c in COLUMNS}


@dataclass(frozen=True)
class Selection:
    rows: tuple[ExportRow, ...]
    classes: tuple[str, ...]  # the spec's classes, in the spec's order
    skipped_rejected: int
    skipped_obsolete: int


@dataclass(frozen=True)
class ExportOptions:
    """How to write: ``link`` hard-links images when possible; ``split`` holds images out by
    fingerprint (formats with splits only); ``merge`` adds to an existing dataset folder."""

    link: bool = True
    split: Split | None = None
    merge: bool = False


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote. ``os.fspath(result)`` is the export's path (folder, or CSV file)."""

    path: Path
    format: str
    counts: dict[str, int]  # exported images per class, in the spec's class order
    linked: int = 0
    copied: int = 0
    unchanged: int = 0
    removed: int = 0  # files a previous export into this dest wrote that this one no longer does
    skipped_rejected: int = 0
    skipped_obsolete: int = 0
    skipped_unlabelled: int = 0
    notes: tuple[str, ...] = field(default=())
    splits: dict[str, int] = field(default_factory=dict)  # exported images per split, with a split

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __fspath__(self) -> str:
        return str(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "total": self.total,
            "counts": dict(self.counts),
            "linked": self.linked,
            "copied": self.copied,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": {
                "rejected": self.skipped_rejected,
                "obsolete": self.skipped_obsolete,
                "unlabelled": self.skipped_unlabelled,
            },
            "splits": dict(self.splits),
            "notes": list(self.notes),
        }


# ---- paths ------------------------------------------------------------------------------
def safe_name(name: str) -> str:
    """A class name as a folder name: the spec validates this already; check again before writing."""
    import re

    if not re.match(NAME_PATTERN, name) or name in (".", "..") or "/" in name or "\\" in name:
        raise ExportError(f"class name {name!r} cannot be used as a folder name")
    return name


def check_dest(dest: Path, output: Path) -> None:
    """Refuse a destination that overlaps the output root's own files."""
    d, o = dest.resolve(), output.resolve()
    if d == o or o.is_relative_to(d):
        raise ExportError(
            f"the export destination {dest} must not be or contain the output root {o}; "
            "choose a folder of its own (e.g. a new folder next to the output root)"
        )
    for own in (CATALOG_DIR, "images"):
        if d.is_relative_to(o / own):
            raise ExportError(
                f"the export destination {dest} is inside the output root's {own}/ folder; choose another folder"
            )


# ---- selection --------------------------------------------------------------------------
def select(loaded: LoadedSpec, catalog: Catalog, include_rejected: bool = False) -> Selection:
    from diffspec.plan.diff import build_plan

    classes = tuple(loaded.classes)
    images = catalog.live_images(_CATALOG_COLUMNS) if catalog.exists() else None
    if images is None or images.num_rows == 0:
        raise ExportError(
            f"nothing to export: the catalog under {catalog.output} has no images yet; "
            f"run `diffspec apply {loaded.path}` first"
        )
    # What the spec no longer asks for (a lowered target, a removed class) stays out, as `gc` would.
    obsolete = {r.fingerprint for r in build_plan(loaded, catalog).removals}
    rejected = rejected_fingerprints(catalog)
    order = {name: i for i, name in enumerate(classes)}
    rows: list[tuple[tuple[int, int, str], ExportRow]] = []
    sizes: dict[str, int | None] = {}
    skipped_rejected = skipped_obsolete = 0
    for r in images.to_pylist():
        fp, cls = r["fingerprint"], r["class_name"]
        if fp in obsolete or cls not in order:
            skipped_obsolete += 1
            continue
        is_rejected = fp in rejected
        if is_rejected and not include_rejected:
            skipped_rejected += 1
            continue
        if not r["path"]:
            raise ExportError(f"catalog row {fp} (class {cls!r}) has no image path")
        source = inside(catalog.output, r["path"], what="read")
        row = ExportRow(
            fingerprint=fp,
            class_name=safe_name(cls),
            label=r["label"],
            prompt=r["prompt"],
            negative_prompt=r["negative_prompt"],
            seed=r["seed"],
            model_source=r["model_source"],
            model_revision=r["model_revision"],
            scheduler=r["scheduler"],
            steps=r["steps"],
            guidance=r["guidance"],
            width=r["width"],
            height=r["height"],
            sha256=r["sha256"],
            source=source,
            rejected=is_rejected,
        )
        sizes[fp] = r["bytes"]
        rows.append(((order[cls], r["unit_index"] if r["unit_index"] is not None else -1, fp), row))
    rows.sort(key=lambda item: item[0])
    selected = tuple(row for _, row in rows)
    missing = [row for row in selected if not row.source.is_file()]
    # A stat per image, no hashing: a file replaced by garbage or torn by a bad copy has another size.
    damaged = [
        row
        for row in selected
        if row not in missing
        and sizes.get(row.fingerprint) is not None
        and row.source.stat().st_size != sizes[row.fingerprint]
    ]
    if damaged:
        shown = ", ".join(str(m.source) for m in damaged[:3]) + (
            f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        )
        raise ExportError(
            f"{len(damaged)} catalog image{'s on disk differ' if len(damaged) != 1 else ' on disk differs'} from "
            f"{'their' if len(damaged) != 1 else 'its'} catalog row (another size): {shown}. Run `diffspec check {loaded.path} --repair` to set them "
            "aside so the next apply makes them again; nothing was exported"
        )
    if missing:
        shown = ", ".join(str(m.source) for m in missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise ExportError(
            f"{len(missing)} catalog image{'s are' if len(missing) != 1 else ' is'} missing on disk: {shown}. "
            f"Run `diffspec apply {loaded.path}` to make them again (`diffspec plan` shows what it would do); "
            "nothing was exported"
        )
    return Selection(selected, classes, skipped_rejected, skipped_obsolete)


def counts_by_class(classes: Sequence[str], rows: Iterable[ExportRow]) -> dict[str, int]:
    counts = dict.fromkeys(classes, 0)
    for row in rows:
        counts[row.class_name] = counts.get(row.class_name, 0) + 1
    return counts


# ---- tables -----------------------------------------------------------------------------
def csv_bytes(header: Sequence[str], records: Iterable[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(
            {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v) for k, v in rec.items()}
        )
    return buf.getvalue().encode("utf-8")


def by_split(rows: Iterable[ExportRow], split: Split | None) -> dict[str, list[ExportRow]]:
    """The rows per split name, train first; everything is train without a split. A split that
    gets no image is still a key (its folder is simply not written)."""
    names = split.names if split is not None else (TRAIN,)
    out: dict[str, list[ExportRow]] = {name: [] for name in names}
    for row in rows:
        out[split.of(row.fingerprint) if split is not None else TRAIN].append(row)
    return out


def empty_split_notes(groups: dict[str, list[ExportRow]]) -> tuple[str, ...]:
    """A held-out split the fractions left empty (few images) is worth a word, not an error."""
    return tuple(
        f"the {name} split got no image: {sum(map(len, groups.values()))} images are too few for its fraction"
        for name, rows in groups.items()
        if not rows and name != TRAIN
    )


def split_result(
    fmt: str,
    dest: Path,
    selection: Selection,
    exported: Sequence[ExportRow],
    groups: dict[str, list[ExportRow]],
    options: ExportOptions,
    stats: dict[str, int],
    notes: tuple[str, ...] = (),
) -> ExportResult:
    """The result of a format that may split and may leave images out (no label yet)."""
    return ExportResult(
        dest,
        fmt,
        counts_by_class(selection.classes, exported),
        skipped_unlabelled=len(selection.rows) - len(exported),
        notes=notes + empty_split_notes(groups),
        splits={name: len(rows) for name, rows in groups.items()} if options.split else {},
        **stats,
    )
