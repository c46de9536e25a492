"""The segment stage's kept instances per image, as the label formats (yolo, coco) read them.

What is read from the ``segment`` table (``catalog/stages/segment/``, written by
:mod:`diffspec.stages.segment_stage`):

    fingerprint  string          the image
    class_name   string or null  the instance's class (null: the image's class)
    polygon      list<double>    normalised x1, y1, x2, y2, ... (YOLO segmentation label), or null
    box          list<double>    normalised x_center, y_center, width, height (detection label), or null
    rle          string          COCO compressed RLE of the mask (column-major), or null
    area         int64           mask pixels
    score        double          the detector's box score
    width/height int32           the image's size in pixels (the RLE's size)
    kept         bool            optional: false for a detection whose mask the mask rules dropped
    run_id       string          optional: only the latest run's rows of an image count

One row per instance; a row with no geometry records an image the stage looked at and found
nothing in (an image with no instance). Images with no row are not segmented yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffspec.catalog.store import Catalog
from diffspec.errors import ExportError
from diffspec.stages.segment_stage import live_segment_rows

SEGMENT_STAGE = "segment"
_COLUMNS = ("fingerprint", "class_name", "polygon", "box", "rle", "area", "score", "width", "height", "run_id", "kept")


@dataclass(frozen=True, slots=True)
class Instance:
    """One kept object of an image: its class id in the spec's order, and what the table holds."""

    class_id: int | None  # None: the image's own class
    polygon: list[float] | None
    box: list[float] | None
    rle: str | None
    area: int | None
    score: float | None
    width: int | None
    height: int | None


def has_segment_output(catalog: Catalog) -> bool:
    return SEGMENT_STAGE in catalog.stages() and bool(catalog.parts(SEGMENT_STAGE))


def read_instances(catalog: Catalog, classes: tuple[str, ...], needs: tuple[str, ...]) -> dict[str, list[Instance]]:
    """Per segmented image fingerprint: its kept instances (an empty list when it holds none).

    ``needs``: columns the caller's format cannot do without (beyond ``fingerprint``); the
    table must have at least one of them. Call :func:`has_segment_output` first."""
    table = live_segment_rows(catalog)
    columns = set(table.column_names)
    if "fingerprint" not in columns or not columns & set(needs):
        raise ExportError(
            f"the segment stage table under {catalog.stage_dir(SEGMENT_STAGE)} has columns "
            f"{sorted(columns)}; this export needs fingerprint and {' or '.join(needs)}"
        )
    ids = {name: i for i, name in enumerate(classes)}
    get = {c: (table.column(c).to_pylist() if c in columns else [None] * table.num_rows) for c in _COLUMNS}
    latest_run: dict[str, Any] = {}
    for fp, run in zip(get["fingerprint"], get["run_id"]):
        latest_run[fp] = run  # parts are read in time order: the last one seen is the latest
    found: dict[str, list[Instance]] = {}
    for fp, cls, polygon, box, rle, area, score, width, height, run, kept in zip(*(get[c] for c in _COLUMNS)):
        if run != latest_run[fp]:
            continue
        instances = found.setdefault(fp, [])
        if kept is False or (polygon is None and box is None and rle is None):
            continue  # looked at: nothing found, or a mask the rules dropped
        if cls is not None and cls not in ids:
            raise ExportError(
                f"segment row of image {fp} names class {cls!r}, which is not a class of the spec "
                f"({', '.join(classes)})"
            )
        instances.append(Instance(ids[cls] if cls is not None else None, polygon, box, rle, area, score, width, height))
    return found


def unlabelled_notes(unlabelled: int) -> tuple[str, ...]:
    if not unlabelled:
        return ()
    many = unlabelled != 1
    return (
        f"{unlabelled} image{'s have' if many else ' has'} no segment output yet and {'were' if many else 'was'} "
        "left out (run `diffspec apply` to segment them)",
    )
