"""COCO instances: ``dest/<split>/<fingerprint>.png`` and ``dest/annotations/instances_<split>.json``.

The layout of COCO 2017 (``train2017/`` beside ``annotations/instances_train2017.json``),
which ``pycocotools.coco.COCO``, torchvision's ``CocoDetection`` and detectron2 read. Without
a split everything is ``train``; with one (:mod:`diffspec.export.split`) also ``val`` and
``test``.

Each file holds:

- ``categories``: one per spec class, ids 1, 2, ... in the spec's class order (so category
  ``id - 1`` is the class id of the yolo export and the ``ClassLabel`` id of the hf export);
- ``images``: every exported image of the split, masks or not, with ``id`` (its place in the
  file, from 1), ``file_name`` (relative to the split folder), ``width``, ``height``, and its
  ``fingerprint`` and ``class`` (the stable keys: ids are renumbered when images come or go);
- ``annotations``: one per kept mask of the segment stage (:mod:`diffspec.export.segments`):
  ``segmentation`` as COCO compressed RLE (``{"size": [h, w], "counts": "..."}``, the string
  form pycocotools decodes), ``area`` (mask pixels), ``bbox`` ``[x, y, w, h]`` in pixels, the
  tight box of the mask (as ``pycocotools.mask.toBbox`` gives), ``iscrowd`` 0, the category of
  the instance's class (the class whose text found it: the image's own), and the detector's
  ``score``.

Images the stage has not looked at yet are left out and counted; a catalog with no segment
output is an error, never a file of images without annotations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from diffspec.catalog.store import Catalog
from diffspec.errors import ExportError, StageError
from diffspec.export.common import (
    ExportOptions,
    ExportResult,
    ExportRow,
    Selection,
    by_split,
    split_result,
)
from diffspec.export.dest import DestWriter
from diffspec.export.segments import Instance, has_segment_output, read_instances, unlabelled_notes
from diffspec.export.split import TRAIN
from diffspec.spec.loader import LoadedSpec
from diffspec.stages.masks import rle_decode, rle_from_string


def _no_masks_error(loaded: LoadedSpec) -> ExportError:
    if loaded.spec.stages.segment is None:
        todo = "add `stages: {segment: ...}` to the spec (docs/stages.md) and run `diffspec apply`"
    else:
        todo = f"run `diffspec apply {loaded.path}` to segment the images"
    return ExportError(
        f"COCO export needs instance masks, and the catalog of {loaded.path} holds no segment stage output; "
        f"nothing was written. To make masks, {todo}; or export with --format imagefolder, hf or csv"
    )


def _annotation(inst: Instance, fp: str, size: tuple[int, int]) -> dict[str, Any]:
    """``size``: the image's (height, width), which the mask's RLE must cover."""
    if inst.rle is None:
        raise ExportError(f"segment row of image {fp}: a kept mask has no RLE; run the segment stage again")
    try:
        mask = rle_decode(rle_from_string(inst.rle, size))
    except StageError as exc:
        raise ExportError(
            f"segment row of image {fp}: its mask does not fit the {size[1]}x{size[0]} image: {exc}"
        ) from exc
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    bbox = (
        [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        if rows.size
        else [0, 0, 0, 0]
    )
    return {
        "segmentation": {"size": [size[0], size[1]], "counts": inst.rle},
        "area": int(mask.sum()),
        "bbox": bbox,
        "iscrowd": 0,
        "score": inst.score,
    }


def _size(row: ExportRow) -> tuple[int, int]:
    """The image's (height, width) as its file has it (the header only): what consumers see."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(row.source) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise ExportError(f"cannot read the size of image {row.source}: {exc}") from exc
    return int(height), int(width)


def instances_json(
    loaded: LoadedSpec, classes: tuple[str, ...], rows: list[ExportRow], found: dict[str, list[Instance]]
) -> bytes:
    ids = {name: i for i, name in enumerate(classes)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, row in enumerate(rows, start=1):
        height, width = _size(row)
        images.append(
            {
                "id": image_id,
                "file_name": f"{row.fingerprint}{row.suffix}",
                "width": width,
                "height": height,
                "fingerprint": row.fingerprint,
                "class": row.class_name,
            }
        )
        own = ids[row.class_name]
        for inst in found[row.fingerprint]:
            body = _annotation(inst, row.fingerprint, (height, width))
            category = (own if inst.class_id is None else inst.class_id) + 1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category, **body})
    data = {
        # No date: a second export of the same images must write the same bytes.
        "info": {"description": f"{loaded.spec.dataset}, exported by diffspec from {loaded.path.name}"},
        "licenses": [],
        "categories": [
            {"id": i + 1, "name": name, "supercategory": loaded.spec.dataset} for i, name in enumerate(classes)
        ],
        "images": images,
        "annotations": annotations,
    }
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def write(
    loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, options: ExportOptions
) -> ExportResult:
    if not has_segment_output(catalog):
        raise _no_masks_error(loaded)
    found = read_instances(catalog, selection.classes, needs=("rle",))
    exported = [row for row in selection.rows if row.fingerprint in found]
    groups = by_split(exported, options.split)
    out = DestWriter(dest, "coco", options.link)
    for split, rows in groups.items():
        if not rows and split != TRAIN:
            continue
        for row in rows:
            out.place(row.source, f"{split}/{row.fingerprint}{row.suffix}", row.sha256)
        out.write_bytes(f"annotations/instances_{split}.json", instances_json(loaded, selection.classes, rows, found))
    stats = out.finish()
    notes = unlabelled_notes(len(selection.rows) - len(exported))
    return split_result("coco", dest, selection, exported, groups, options, stats, notes)
