"""YOLO (Ultralytics layout): ``images/train/<fingerprint>.png``, ``labels/train/<fingerprint>.txt``,
``data.yaml`` and ``classes.txt``, class ids in the spec's class order.

Labels come from the ``segment`` stage table (``catalog/stages/segment/``, written by the
segment stage, :mod:`diffspec.stages.segment_stage`), never invented: with no segment output the
export stops with an error instead of writing empty label files, which would teach a detector
that the images hold no objects.

What this export reads from the ``segment`` table:

    fingerprint  string          the image
    class_name   string or null  the instance's class (null: the image's class)
    polygon      list<double>    normalised x1, y1, x2, y2, ... (segmentation label), or null
    box          list<double>    normalised x_center, y_center, width, height (detection label), or null
    kept         bool            optional: false for a detection whose mask the mask rules dropped
    run_id       string          optional: only the latest run's rows of an image count

One row per instance; a row with neither polygon nor box records an image the stage looked at
and found nothing in (an empty label file). A kept mask is written as its polygon (the
segmentation label); its box only where it has no polygon. Images with no row are not
segmented yet and are left out of the export (counted as unlabelled).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from diffspec.catalog.store import Catalog
from diffspec.errors import ExportError
from diffspec.export.common import DestWriter, ExportResult, Selection, counts_by_class
from diffspec.spec.loader import LoadedSpec
from diffspec.stages.segment_stage import live_segment_rows

SEGMENT_STAGE = "segment"
SPLIT = "train"


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
    if SEGMENT_STAGE not in catalog.stages() or not catalog.parts(SEGMENT_STAGE):
        raise _no_labels_error(loaded)
    table = live_segment_rows(catalog)
    columns = set(table.column_names)
    if "fingerprint" not in columns or not columns & {"polygon", "box"}:
        raise ExportError(
            f"the segment stage table under {catalog.stage_dir(SEGMENT_STAGE)} has columns "
            f"{sorted(columns)}; YOLO export needs fingerprint and polygon or box"
        )
    ids = {name: i for i, name in enumerate(classes)}
    names = ("fingerprint", "class_name", "polygon", "box", "run_id", "kept")
    get = {c: (table.column(c).to_pylist() if c in columns else [None] * table.num_rows) for c in names}
    latest_run: dict[str, Any] = {}
    for fp, run in zip(get["fingerprint"], get["run_id"]):
        latest_run[fp] = run  # parts are read in time order: the last one seen is the latest
    labels: dict[str, list[tuple[int | None, str]]] = {}
    for fp, cls, polygon, box, run, kept in zip(*(get[c] for c in names)):
        if run != latest_run[fp]:
            continue
        instances = labels.setdefault(fp, [])
        if kept is False or (polygon is None and box is None):
            continue  # looked at: nothing found, or a mask the rules dropped
        kind, values = ("polygon", polygon) if polygon is not None else ("box", box)
        if cls is not None and cls not in ids:
            raise ExportError(
                f"segment row of image {fp} names class {cls!r}, which is not a class of the spec "
                f"({', '.join(classes)})"
            )
        body = " ".join(f"{c:.6g}" for c in _coords(values, kind, fp))
        instances.append((ids[cls] if cls is not None else None, body))
    return labels


def data_yaml(dest: Path, classes: tuple[str, ...], spec_path: Path) -> str:
    q = json.dumps  # a JSON string is a valid YAML scalar, whatever the class name holds
    lines = [
        f"# Written by `diffspec export --format yolo` from {spec_path.name}.",
        "# There is no held-out split: point `val` at real images before you train.",
        f"path: {q(str(dest.resolve()))}",
        f"train: {q(f'images/{SPLIT}')}",
        f"val: {q(f'images/{SPLIT}')}",
        f"nc: {len(classes)}",
        "names:",
        *(f"  {i}: {q(name)}" for i, name in enumerate(classes)),
    ]
    return "\n".join(lines) + "\n"


def write(loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, *, link: bool) -> ExportResult:
    labels = read_labels(loaded, catalog, selection.classes)
    ids = {name: i for i, name in enumerate(selection.classes)}
    out = DestWriter(dest, "yolo", link)
    exported = []
    for row in selection.rows:
        if row.fingerprint not in labels:
            continue
        own = ids[row.class_name]
        text = "".join(f"{own if cid is None else cid} {body}\n" for cid, body in labels[row.fingerprint])
        out.place(row.source, f"images/{SPLIT}/{row.fingerprint}{row.suffix}", row.sha256)
        out.write_bytes(f"labels/{SPLIT}/{row.fingerprint}.txt", text.encode())
        exported.append(row)
    out.write_bytes("classes.txt", "".join(f"{name}\n" for name in selection.classes).encode())
    out.write_bytes("data.yaml", data_yaml(dest, selection.classes, loaded.path).encode())
    stats = out.finish()
    unlabelled = len(selection.rows) - len(exported)
    notes = (
        (
            f"{unlabelled} image{'s have' if unlabelled != 1 else ' has'} no segment output yet and {'were' if unlabelled != 1 else 'was'} left out",
        )
        if unlabelled
        else ()
    )
    return ExportResult(
        dest, "yolo", counts_by_class(selection.classes, exported), skipped_unlabelled=unlabelled, notes=notes, **stats
    )
