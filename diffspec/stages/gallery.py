"""What a person looks at when judging images: the facts the review page and the report show.

One reader for both: live images with their provenance, each filter's latest verdict and value
(:func:`diffspec.catalog.verdicts.latest_filter_scores`), the state from
:func:`diffspec.catalog.verdicts.verdicts` (never worked out here), and the segment stage's kept
masks of each image's latest segment run, decoded from their COCO RLE and drawn as a coloured
overlay. Only the overlay needs Pillow (to encode a PNG); the rest is numpy and pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import UNREVIEWED, Verdict, latest_filter_scores, verdicts
from diffspec.errors import StageError
from diffspec.stages.masks import rle_decode, rle_from_string

IMAGE_COLUMNS = [
    "fingerprint",
    "class_name",
    "prompt",
    "negative_prompt",
    "seed",
    "model_name",
    "model_source",
    "scheduler",
    "steps",
    "guidance",
    "width",
    "height",
    "path",
    "sha256",
    "unit_index",
]

# Distinct, readable over greyscale digits and photos alike; instance i takes colour i mod 6.
MASK_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
MASK_ALPHA = 60  # a light fill and a stronger outline: the picture stays visible under several masks
MASK_OUTLINE_ALPHA = 190


@dataclass(frozen=True, slots=True)
class FilterScore:
    name: str
    passed: bool | None
    value: float | None


@dataclass(frozen=True, slots=True)
class Mask:
    """One kept detection of the segment stage: its mask as COCO RLE text and its box in pixels."""

    rle: str
    width: int
    height: int
    label: str | None
    score: float | None
    box_xyxy: tuple[float, ...] | None


@dataclass(frozen=True, slots=True)
class ImageFacts:
    fingerprint: str
    class_name: str
    path: str  # relative to the output root, as the catalog holds it
    sha256: str | None
    unit_index: int | None
    row: dict[str, Any]  # the catalog row's provenance columns (prompt, seed, model ...)
    verdict: Verdict
    scores: tuple[FilterScore, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: self.row.get(k) for k in IMAGE_COLUMNS if k not in ("path", "sha256")},
            "state": self.verdict.state,
            "by": self.verdict.by,
            "failed_filters": list(self.verdict.failed_filters),
            "scores": [{"filter": s.name, "passed": s.passed, "value": s.value} for s in self.scores],
        }


def image_facts(catalog: Catalog) -> list[ImageFacts]:
    """Every live image with its verdict and filter scores, by class then unit index."""
    if not catalog.exists():
        return []
    table = catalog.live_images(IMAGE_COLUMNS)
    rows = table.to_pylist() if table.num_rows else []
    states = verdicts(catalog)
    scores = latest_filter_scores(catalog)
    facts = [
        ImageFacts(
            fingerprint=r["fingerprint"],
            class_name=r["class_name"],
            path=r["path"],
            sha256=r.get("sha256"),
            unit_index=r.get("unit_index"),
            row=r,
            verdict=states.get(r["fingerprint"], UNREVIEWED),
            scores=tuple(
                FilterScore(name, passed, value)
                for name, (passed, value) in sorted(scores.get(r["fingerprint"], {}).items())
            ),
        )
        for r in rows
    ]
    facts.sort(key=lambda f: (f.class_name, f.unit_index if f.unit_index is not None else -1, f.fingerprint))
    return facts


def kept_masks(catalog: Catalog) -> dict[str, list[Mask]]:
    """Per image, the kept masks of its latest segment run (the rows a YOLO export writes)."""
    from diffspec.plan.stages import SEGMENT_STAGE
    from diffspec.stages.segment_stage import live_segment_rows

    if SEGMENT_STAGE not in catalog.stages() or not catalog.parts(SEGMENT_STAGE):
        return {}
    names = ("fingerprint", "run_id", "kept", "rle", "width", "height", "label", "score", "box_xyxy")
    table = live_segment_rows(catalog)
    if any(n not in table.column_names for n in names):
        return {}
    cols = [table.column(n).to_pylist() for n in names]
    latest_run: dict[str, Any] = {}
    for fp, run in zip(cols[0], cols[1]):
        latest_run[fp] = run  # parts are read in time order: the last one seen is the latest
    out: dict[str, list[Mask]] = {}
    for fp, run, kept, rle, width, height, label, score, box in zip(*cols):
        if run != latest_run[fp] or not kept or rle is None or not width or not height:
            continue
        out.setdefault(fp, []).append(
            Mask(rle, int(width), int(height), label, score, tuple(box) if box is not None else None)
        )
    return out


def overlay(masks: list[Mask], width: int, height: int) -> np.ndarray:
    """An (height, width, 4) RGBA overlay: each mask lightly filled and outlined in its colour,
    transparent elsewhere.

    A mask recorded at another size than the picture (it never is, but a catalog is data) is
    scaled to it by nearest neighbour, so the overlay always lies on the image it is drawn over."""
    out = np.zeros((height, width, 4), dtype=np.uint8)
    for i, m in enumerate(masks):
        try:
            mask = rle_decode(rle_from_string(m.rle, (m.height, m.width)))
        except (StageError, ValueError) as exc:
            raise StageError(f"a mask of the segment table does not decode: {exc}") from exc
        if mask.shape != (height, width):
            rows = np.arange(height) * mask.shape[0] // height
            cols = np.arange(width) * mask.shape[1] // width
            mask = mask[rows][:, cols]
        colour = MASK_COLOURS[i % len(MASK_COLOURS)]
        out[mask] = (*colour, MASK_ALPHA)
        out[_outline(mask)] = (*colour, MASK_OUTLINE_ALPHA)
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels that touch a pixel outside it (4-neighbourhood, the image edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge: np.ndarray = mask & ~inner
    return edge


def png_bytes(rgba: np.ndarray) -> bytes:
    import io

    try:
        from PIL import Image
    except ImportError:  # the light install (validate, plan, status) has no Pillow
        raise StageError("drawing masks needs Pillow: pip install 'diffspec[gen]'") from None

    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()
