"""YOLO (Ultralytics layout): ``images/train/<fingerprint>.png``, ``labels/train/<fingerprint>.txt``,
``data.yaml`` and ``classes.txt``, class ids in the spec's class order.

Labels come from the ``segment`` stage table (``catalog/stages/segment/``, written by the
segment stage, :mod:`diffspec.stages.segment_stage`), never invented: with no segment output the
export stops with an error instead of writing empty label files, which would teach a detector
that the images hold no objects.

What it reads from the table: :mod:`diffspec.export.segments`. A kept mask is written as its
polygon (the segmentation label); its box only where it has no polygon. Images with no row
are not segmented yet and are left out of the export (counted as unlabelled).

With a split (:mod:`diffspec.export.split`) the images and labels of each split go to
``images/<split>/`` and ``labels/<split>/`` and ``data.yaml`` points ``train``, ``val`` (and
``test``) at them; without one, everything is ``train`` and ``val`` points at it too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from diffspec.catalog.store import Catalog
from diffspec.errors import ExportError
from diffspec.export.common import ExportOptions, ExportResult, Selection, by_split, split_result
from diffspec.export.dest import DestWriter
from diffspec.export.segments import has_segment_output, read_instances, unlabelled_notes
from diffspec.export.split import TEST, TRAIN, VAL
from diffspec.spec.loader import LoadedSpec


def _no_labels_error(loaded: LoadedSpec) -> ExportError:
    return ExportError(
        f"YOLO export needs object labels, and the catalog of {loaded.path} holds none (no `segment` stage "
        "table); no empty label files were written. Add `stages: {segment: ...}` to the spec and run "
        "`diffspec apply`, or export with --format imagefolder, hf or csv"
    )


def _coords(values: Any, kind: str, fp: str) -> list[float]:
    coords = [float(v) for v in values]
    if kind == "box" and len(coords) != 4:
        raise ExportError(
            f"segment row of image {fp}: a box has 4 numbers (x_center, y_center, width, height), got {len(coords)}"
        )
    if kind == "polygon" and (len(coords) < 6 or len(coords) % 2):
        raise ExportError(
            f"segment row of image {fp}: a polygon needs an even count of at least 6 numbers, got {len(coords)}"
        )
    if any(not math.isfinite(c) or c < 0 or c > 1 for c in coords):
        raise ExportError(f"segment row of image {fp}: {kind} coordinates must be normalised to [0, 1], got {coords}")
    return coords


def read_labels(
    loaded: LoadedSpec, catalog: Catalog, classes: tuple[str, ...]
) -> dict[str, list[tuple[int | None, str]]]:
    """Per image fingerprint: (class id, or None for the image's own class; coordinates) per
    instance, from the ``segment`` stage table."""
    if not has_segment_output(catalog):
        raise _no_labels_error(loaded)
    labels: dict[str, list[tuple[int | None, str]]] = {}
    for fp, instances in read_instances(catalog, classes, needs=("polygon", "box")).items():
        lines = labels.setdefault(fp, [])
        for inst in instances:
            if inst.polygon is None and inst.box is None:
                continue  # a mask without an outline: nothing a YOLO line can hold
            kind, values = ("polygon", inst.polygon) if inst.polygon is not None else ("box", inst.box)
            lines.append((inst.class_id, " ".join(f"{c:.6g}" for c in _coords(values, kind, fp))))
    return labels


def data_yaml(dest: Path, classes: tuple[str, ...], spec_path: Path, splits: tuple[str, ...]) -> str:
    q = json.dumps  # a JSON string is a valid YAML scalar, whatever the class name holds
    held_out = [name for name in splits if name != TRAIN]
    lines = [
        f"# Written by `diffspec export --format yolo` from {spec_path.name}.",
        *(
            ()
            if VAL in held_out
            else ("# There is no held-out split: point `val` at real images before you train (or export with --val).",)
        ),
        f"path: {q(str(dest.resolve()))}",
        f"train: {q(f'images/{TRAIN}')}",
        f"val: {q(f'images/{VAL if VAL in held_out else TRAIN}')}",
        *((f"test: {q(f'images/{TEST}')}",) if TEST in held_out else ()),
        f"nc: {len(classes)}",
        "names:",
        *(f"  {i}: {q(name)}" for i, name in enumerate(classes)),
    ]
    return "\n".join(lines) + "\n"


def write(
    loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, options: ExportOptions
) -> ExportResult:
    labels = read_labels(loaded, catalog, selection.classes)
    ids = {name: i for i, name in enumerate(selection.classes)}
    out = DestWriter(dest, "yolo", options.link)
    exported = [row for row in selection.rows if row.fingerprint in labels]
    groups = by_split(exported, options.split)
    for split, rows in groups.items():
        for row in rows:
            own = ids[row.class_name]
            text = "".join(f"{own if cid is None else cid} {body}\n" for cid, body in labels[row.fingerprint])
            out.place(row.source, f"images/{split}/{row.fingerprint}{row.suffix}", row.sha256)
            out.write_bytes(f"labels/{split}/{row.fingerprint}.txt", text.encode())
    written = tuple(name for name, rows in groups.items() if rows or name == TRAIN)
    out.write_bytes("classes.txt", "".join(f"{name}\n" for name in selection.classes).encode())
    out.write_bytes("data.yaml", data_yaml(dest, selection.classes, loaded.path, written).encode())
    stats = out.finish()
    notes = unlabelled_notes(len(selection.rows) - len(exported))
    return split_result("yolo", dest, selection, exported, groups, options, stats, notes)
