"""Run the segment stage's planned units: boxes and masks of each image, recorded batch by batch.

`apply` calls :func:`run_segment` after the images (``diffspec.run.stage_phase``) with the
plan's :class:`~diffspec.plan.stages.SegmentPlan`. One :class:`TextSegmenter` is loaded for the
run; units are taken in the plan's order, ``batch_size`` images per detector and segmenter call,
and each batch's rows go to the catalog as one atomic Parquet part before the next batch
starts. So a killed run loses at most the batch in hand, and the next apply makes exactly the
units whose rows are missing.

The ``segment`` table holds one row per detection, kept or dropped by the mask rules (with the
reason), and one row with no detection for an image in which nothing was found (an image that
was looked at, so its label file is empty rather than missing). See :data:`SEGMENT_SCHEMA`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from diffspec.catalog.columns import column, table_from_rows
from diffspec.catalog.store import Catalog, first_positions, utcnow
from diffspec.errors import StageError
from diffspec.plan.stages import SEGMENT_STAGE, SegmentPlan, SegmentUnit, done_segments
from diffspec.run.events import RunEvent, event
from diffspec.run.stage_phase import StageContext, StageOutcome
from diffspec.stages.masks import mask_to_polygons, rle_encode, rle_to_string
from diffspec.stages.parts import compact_stage, tidy_stage

SEGMENT_SCHEMA = pa.schema(
    [
        ("fingerprint", pa.string()),  # the image
        ("segment_fingerprint", pa.string()),  # the unit (masks under these rules)
        ("detection_fingerprint", pa.string()),  # the boxes
        ("class_name", pa.string()),  # the instance's class: the class whose text found it
        ("prompt", pa.string()),  # the text as the detector saw it ("plum.")
        ("instance", pa.int32()),  # detection index in score order; null: nothing found
        ("label", pa.string()),  # the phrase the detector matched
        ("score", pa.float64()),  # the detector's box score
        ("box_xyxy", pa.list_(pa.float64())),  # pixels, clipped to the image
        ("box", pa.list_(pa.float64())),  # normalised x_center, y_center, width, height
        ("mask_score", pa.float64()),  # SAM's predicted IoU
        ("area", pa.int64()),  # mask pixels
        ("rle", pa.string()),  # COCO compressed RLE of the mask (column-major), size = height x width
        ("kept", pa.bool_()),  # survived the mask rules
        ("drop_reason", pa.string()),  # why not: empty, too_small, too_large, duplicate, merged, nested, no_polygon
        ("polygon", pa.list_(pa.float64())),  # kept masks: the largest outline, normalised x1 y1 x2 y2 ...
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("detector", pa.string()),
        ("segmenter", pa.string()),
        ("device", pa.string()),
        ("batch_size", pa.int32()),
        ("seconds", pa.float64()),  # per image, for the plan's estimates
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _rows(unit: SegmentUnit, result: Any, stage: SegmentPlan, device: str, run_id: str) -> list[dict[str, Any]]:
    base = {
        "fingerprint": unit.image_fingerprint,
        "segment_fingerprint": unit.fingerprint,
        "detection_fingerprint": unit.detection_fingerprint,
        "class_name": unit.class_name,
        "prompt": result.prompt,
        "width": result.width,
        "height": result.height,
        "detector": stage.detector.source,
        "segmenter": stage.segmenter.source,
        "device": device,
        "batch_size": stage.batch_size,
        "seconds": float(result.seconds),
        "run_id": run_id,
        "created_at": utcnow(),
    }
    if not result.detections:
        return [{**base, "instance": None}]
    rows = []
    kept = set(result.kept)
    for i, det in enumerate(result.detections):
        mask = np.asarray(result.masks[i], dtype=bool)
        reason = result.outcome.reason(i)
        polygon = None
        if i in kept:
            outlines = [p for p in mask_to_polygons(mask) if len(p) >= 3]
            if outlines:
                polygon = [float(v) for v in outlines[0].ravel()]
            else:  # a mask of a few pixels has no outline a YOLO label can hold
                reason = "no_polygon"
        rows.append(
            {
                **base,
                "instance": i,
                "label": det.label,
                "score": float(det.score),
                "box_xyxy": [float(v) for v in det.box],
                "box": [float(v) for v in det.yolo_box(result.width, result.height)],
                "mask_score": float(result.mask_scores[i]) if len(result.mask_scores) > i else None,
                "area": int(mask.sum()),
                "rle": rle_to_string(rle_encode(mask)),
                "kept": polygon is not None,
                "drop_reason": None if polygon is not None else reason,
                "polygon": polygon,
            }
        )
    return rows


def _image_paths(catalog: Catalog) -> dict[str, str]:
    live = catalog.live_images(["fingerprint", "path"])
    return dict(zip(live.column("fingerprint").to_pylist(), live.column("path").to_pylist()))


def run_segment(stage: SegmentPlan, context: StageContext, segmenter: Any = None) -> StageOutcome:
    """Make ``stage.create``; ``segmenter`` replaces the loaded :class:`TextSegmenter` (tests)."""
    from PIL import Image

    t0 = time.perf_counter()
    catalog = context.catalog
    tidy_stage(catalog, context.run_id, SEGMENT_STAGE)
    paths = _image_paths(catalog)
    ready = [u for u in stage.create if u.image_fingerprint in paths]
    waiting = len(stage.create) - len(ready)
    events: list[RunEvent] = []
    if waiting:
        events.append(
            event(
                "stage_waiting",
                f"segment: {waiting} units wait for images that are not in the catalog (failed or not made yet)",
                count=waiting,
            )
        )
    # Units recorded since the plan was made (a resumed run) are not made again.
    done = done_segments(catalog)
    todo = [u for u in ready if u.fingerprint not in done]
    made = failed = 0
    if todo and segmenter is None:
        from diffspec.stages.segment import TextSegmenter

        context.note(f"segment: loading {stage.detector.source} and {stage.segmenter.source}")
        segmenter = TextSegmenter.load(stage.detector, stage.segmenter, context.device)
    interrupted = False
    for start in range(0, len(todo), stage.batch_size):
        if context.stop.is_set():
            interrupted = True
            break
        batch = todo[start : start + stage.batch_size]
        try:
            images = []
            for unit in batch:
                with Image.open(context.output / paths[unit.image_fingerprint]) as im:
                    images.append(im.convert("RGB"))
            results = segmenter.run(
                images, [u.text for u in batch], stage.params, stage.mask_filter, batch_size=stage.batch_size
            )
        except (OSError, StageError, ValueError, RuntimeError) as exc:
            # One bad batch (an unreadable image, a kernel error) fails alone; the next apply
            # tries its units again. A model that cannot load fails the stage above, not here.
            failed += len(batch)
            events.append(
                event("stage_batch_failed", f"segment: a batch of {len(batch)} failed: {type(exc).__name__}: {exc}")
            )
            continue
        rows = [
            row
            for unit, result in zip(batch, results)
            for row in _rows(unit, result, stage, context.device, context.run_id)
        ]
        catalog.append_stage(SEGMENT_STAGE, table_from_rows(rows, SEGMENT_SCHEMA), context.run_id)
        made += len(batch)
    compact_stage(catalog, context.run_id, SEGMENT_STAGE)
    return StageOutcome(
        SEGMENT_STAGE, made, failed, waiting, time.perf_counter() - t0, interrupted=interrupted, events=tuple(events)
    )


def live_segment_rows(catalog: Catalog, columns: Sequence[str] | None = None) -> pa.Table:
    """The table with each row once: a crash between a compaction's write and its clean-up
    leaves a part's rows twice, so rows repeat (segment fingerprint, run, instance)."""
    table = catalog.read_table(SEGMENT_STAGE, list(columns) if columns else None)
    if table.num_rows == 0 or not {"segment_fingerprint", "run_id", "instance"} <= set(table.column_names):
        return table
    keys = [
        f"{s}|{r}|{i}"
        for s, r, i in zip(
            table.column("segment_fingerprint").to_pylist(),
            table.column("run_id").to_pylist(),
            table.column("instance").to_pylist(),
        )
    ]
    keep = first_positions(keys)
    return table if len(keep) == table.num_rows else table.take(column(keep, pa.int64()))
