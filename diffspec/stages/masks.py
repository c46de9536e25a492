"""Mask post-processing, RLE and polygons: pure numpy (and opencv for contours), no torch.

The fruit seed's Lang-SAM clean-up, with each rule defined and parameterised
(:class:`MaskFilter`); :func:`filter_masks` applies them in this order, each to what the
previous rules kept:

1. **area**: drop a mask with fewer than ``min_area`` × image pixels (tiny artifacts) or more
   than ``max_area`` × image pixels (background, the whole table), and every empty mask;
2. **duplicates**: greedy non-maximum suppression on mask IoU, highest score first: a mask
   whose IoU with a kept mask is above ``dedup_iou`` (0.7) is dropped, so of two overlapping
   masks the higher-scored one stays;
3. **merged objects**: a mask M is a merge of several objects when at least
   ``merged_min_parts`` (2) other masks each lie inside it for at least ``merged_cover`` (0.8)
   of their own area *and* together cover at least ``merged_fill`` (0.6) of M. M is dropped
   and its parts kept. The fill condition separates "two plums in one mask" (the parts explain
   the mask) from "a plum and its stem and leaf" (small parts inside a whole object, which is
   kept by the next rule instead);
4. **nesting**: keep top-level objects: a mask lying inside a larger kept mask for at least
   ``contained`` (0.9) of its own area is dropped (a stem inside its fruit, a highlight inside
   its pepper). Masks are visited from the largest down.

Merges are removed before nesting on purpose: the other order would keep the merged mask and
drop the very objects it merged.

Scores are the caller's (the segment stage passes the detector's box scores); equal scores
keep the earlier mask.

RLE is COCO's: column-major runs starting with a (possibly empty) run of zeros, as
``pycocotools.mask`` stores them; :func:`rle_to_string` / :func:`rle_from_string` give COCO's
compressed text form too. Polygons are external contours from ``cv2.findContours``
normalised to [0, 1] with the pixel-centre convention (``(x + 0.5) / width``), so that a
consumer scaling back by the image size and truncating, as Ultralytics does, lands on the
same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffspec.errors import StageError
from diffspec.plan.stage_identity import MaskFilter

__all__ = [
    "DROP_REASONS",
    "FilterOutcome",
    "MaskFilter",
    "Rle",
    "filter_masks",
    "mask_iou",
    "mask_to_polygons",
    "pairwise_intersections",
    "parse_yolo_segment_line",
    "polygons_to_mask",
    "rle_area",
    "rle_decode",
    "rle_encode",
    "rle_from_string",
    "rle_to_string",
    "yolo_segment_line",
]

DROP_REASONS = ("empty", "too_small", "too_large", "duplicate", "merged", "nested")


@dataclass(frozen=True, slots=True)
class FilterOutcome:
    """Which masks survived, in input order, and why each other one was dropped."""

    kept: tuple[int, ...]
    dropped: tuple[tuple[int, str], ...]  # (index, reason), reason in DROP_REASONS

    def reason(self, index: int) -> str | None:
        return dict(self.dropped).get(index)


def _as_masks(masks: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    array = np.asarray(masks)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise StageError(f"masks must be an (n, height, width) array, got shape {array.shape}")
    return array.astype(bool, copy=False)


def pairwise_intersections(masks: np.ndarray) -> np.ndarray:
    """(n, n) pixel counts of every pairwise intersection (the diagonal holds the areas).

    Computed on the union of the masks' bounding rows and columns only, as a matrix product of
    0/1 rows: exact in float64 up to 2**53 pixels.
    """
    masks = _as_masks(masks)
    n = masks.shape[0]
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64)
    rows = np.flatnonzero(masks.any(axis=(0, 2)))
    cols = np.flatnonzero(masks.any(axis=(0, 1)))
    if rows.size == 0:
        return np.zeros((n, n), dtype=np.int64)
    crop = masks[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].reshape(n, -1).astype(np.float32)
    return np.rint(crop.astype(np.float64) @ crop.T.astype(np.float64)).astype(np.int64)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape (0.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise StageError(f"mask_iou: shapes differ, {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def filter_masks(
    masks: np.ndarray | Sequence[np.ndarray], scores: Sequence[float], params: MaskFilter
) -> FilterOutcome:
    """Apply the four rules of the module docstring; see :class:`MaskFilter` for the parameters."""
    masks = _as_masks(masks)
    n = masks.shape[0]
    scores_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores_arr.shape[0] != n:
        raise StageError(f"filter_masks: {n} masks but {scores_arr.shape[0]} scores")
    if n == 0:
        return FilterOutcome((), ())
    pixels = masks.shape[1] * masks.shape[2]
    inter = pairwise_intersections(masks)
    area = np.diag(inter).astype(np.float64)
    dropped: dict[int, str] = {}

    # 1. area
    for i in range(n):
        if area[i] == 0:
            dropped[i] = "empty"
        elif area[i] < params.min_area * pixels:
            dropped[i] = "too_small"
        elif area[i] > params.max_area * pixels:
            dropped[i] = "too_large"

    # 2. duplicates: greedy NMS by mask IoU, stable for equal scores
    kept: list[int] = []
    for i in sorted((i for i in range(n) if i not in dropped), key=lambda i: (-scores_arr[i], i)):
        for k in kept:
            union = area[i] + area[k] - inter[i, k]
            if union > 0 and inter[i, k] / union > params.dedup_iou:
                dropped[i] = "duplicate"
                break
        else:
            kept.append(i)

    # 3. merged objects, judged against every mask that survived dedup
    alive = sorted(kept)
    merged = set()
    for m in alive:
        parts = [p for p in alive if p != m and area[p] < area[m] and inter[p, m] >= params.merged_cover * area[p]]
        if len(parts) < params.merged_min_parts:
            continue
        covered = np.logical_and(masks[m], np.logical_or.reduce(masks[parts], axis=0)).sum()
        if covered >= params.merged_fill * area[m]:
            merged.add(m)
    for m in merged:
        dropped[m] = "merged"
    alive = [i for i in alive if i not in merged]

    # 4. nesting: largest first, drop what lies mostly inside a kept larger mask
    top: list[int] = []
    for i in sorted(alive, key=lambda i: (-area[i], i)):
        if any(inter[i, k] >= params.contained * area[i] for k in top):
            dropped[i] = "nested"
        else:
            top.append(i)
    return FilterOutcome(tuple(sorted(top)), tuple(sorted(dropped.items())))


# --------------------------------------------------------------------------- RLE


@dataclass(frozen=True, slots=True)
class Rle:
    """COCO uncompressed RLE: ``size`` is (height, width); ``counts`` alternate zeros and ones
    over the column-major pixels, starting with zeros."""

    size: tuple[int, int]
    counts: tuple[int, ...]

    def to_coco(self) -> dict[str, object]:
        """The dict pycocotools and COCO JSON use (``{"size": [h, w], "counts": [...]}``)."""
        return {"size": [self.size[0], self.size[1]], "counts": list(self.counts)}


def rle_encode(mask: np.ndarray) -> Rle:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise StageError(f"rle_encode: a mask is 2-D (height, width), got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.astype(bool).ravel(order="F").astype(np.int8)
    if flat.size == 0:
        return Rle((h, w), ())
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return Rle((h, w), tuple(runs))  # already Python ints (tolist)


def rle_decode(rle: Rle) -> np.ndarray:
    h, w = rle.size
    counts = np.asarray(rle.counts, dtype=np.int64)
    if counts.size and (counts < 0).any():
        raise StageError("rle_decode: negative run length")
    if int(counts.sum()) != h * w:
        raise StageError(f"rle_decode: runs sum to {int(counts.sum())} pixels, the size says {h}x{w} = {h * w}")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def rle_area(rle: Rle) -> int:
    return int(sum(rle.counts[1::2]))


def rle_to_string(rle: Rle) -> str:
    """COCO's compressed counts string (``pycocotools`` ``rleToString``).

    Each count (after the third, as the delta against the count two back) is written in 5-bit
    groups, low first, a continuation bit 0x20 on all but the last, offset by 48. Done for all
    counts at once, a group index at a time (a mask has thousands of runs; a Python loop over
    them was most of the segment stage's own cost)."""
    counts = np.asarray(rle.counts, dtype=np.int64)
    if counts.size == 0:
        return ""
    x = counts.copy()
    x[3:] -= counts[1:-2]  # deltas against the run two back, like COCO
    groups: list[np.ndarray] = []
    written: list[np.ndarray] = []
    active = np.ones(x.size, dtype=bool)
    while active.any():
        c = x & 0x1F
        x = x >> 5  # arithmetic shift: a negative delta ends at -1
        more = np.where((c & 0x10) != 0, x != -1, x != 0) & active
        groups.append(np.where(more, c | 0x20, c) + 48)
        written.append(active)
        active = more
    chars = np.stack(groups, axis=1)[np.stack(written, axis=1)]  # row-major: count by count
    return chars.astype(np.uint8).tobytes().decode("ascii")


def rle_from_string(text: str, size: tuple[int, int]) -> Rle:
    """The inverse of :func:`rle_to_string` (``pycocotools`` ``rleFrString``)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(text):
                raise StageError("rle_from_string: truncated counts string")
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return Rle((int(size[0]), int(size[1])), tuple(counts))


# --------------------------------------------------------------------------- polygons


def mask_to_polygons(mask: np.ndarray, min_pixels: int = 1, tolerance: float = 0.0) -> list[np.ndarray]:
    """External contours of a mask as (k, 2) float arrays of normalised (x, y), largest first.

    Each connected component becomes one polygon (as Ultralytics' own mask-to-YOLO converter
    writes them); holes are not represented (YOLO polygons cannot hold them). Components with
    fewer than ``min_pixels`` pixels are skipped, as are contours of fewer than 3 points.
    ``tolerance`` > 0 simplifies each contour with Douglas-Peucker (``cv2.approxPolyDP``) at
    that many pixels; 0 keeps every corner.
    """
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise StageError(f"mask_to_polygons: a mask is 2-D, got shape {mask.shape}")
    h, w = mask.shape
    binary = np.ascontiguousarray(mask.astype(np.uint8))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    found: list[tuple[float, np.ndarray]] = []
    for contour in contours:
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, tolerance, True)
        points = contour.reshape(-1, 2).astype(np.float64)
        if points.shape[0] < 3:
            # a one- or two-pixel-thin component: its contour is a point or a segment; widen it
            # to the pixel squares it covers so it still becomes a (thin) polygon
            x0, y0 = points.min(axis=0)
            x1, y1 = points.max(axis=0)
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
            pixels = int((x1 - x0 + 1) * (y1 - y0 + 1))
        else:
            # pixels of this component: fill its contour inside its bounding box only
            bx, by, bw, bh = cv2.boundingRect(contour)
            filled = np.zeros((bh, bw), dtype=np.uint8)
            cv2.fillPoly(filled, [(contour.reshape(-1, 2) - [bx, by]).reshape(-1, 1, 2).astype(np.int32)], 1)
            pixels = int(np.logical_and(filled, binary[by : by + bh, bx : bx + bw]).sum())
        if pixels < min_pixels:
            continue
        normalised = np.empty_like(points)
        normalised[:, 0] = (points[:, 0] + 0.5) / w
        normalised[:, 1] = (points[:, 1] + 0.5) / h
        found.append((pixels, np.clip(normalised, 0.0, 1.0)))
    found.sort(key=lambda item: -item[0])
    return [poly for _, poly in found]


def polygons_to_mask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise normalised polygons back to a boolean mask (the read-back of a YOLO label)."""
    import cv2

    canvas = np.zeros((height, width), dtype=np.uint8)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if pts.shape[0] < 3:
            continue
        pixels = np.empty_like(pts)
        pixels[:, 0] = pts[:, 0] * width - 0.5
        pixels[:, 1] = pts[:, 1] * height - 0.5
        cv2.fillPoly(canvas, [np.rint(pixels).astype(np.int32).reshape(-1, 1, 2)], 1)
    return canvas.astype(bool)


def yolo_segment_line(class_id: int, polygon: np.ndarray, digits: int = 6) -> str:
    """``class x1 y1 x2 y2 ...`` with normalised coordinates, one instance per line."""
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if pts.shape[0] < 3:
        raise StageError(f"a YOLO segment needs at least 3 points, got {pts.shape[0]}")
    if not np.all((pts >= 0) & (pts <= 1)):
        raise StageError("YOLO segment coordinates must be normalised to [0, 1]")
    coords = " ".join(f"{v:.{digits}f}" for v in pts.ravel())
    return f"{int(class_id)} {coords}"


def parse_yolo_segment_line(line: str) -> tuple[int, np.ndarray]:
    parts = line.split()
    if len(parts) < 7 or len(parts) % 2 == 0:
        raise StageError(f"not a YOLO segment line (class and >= 3 x y pairs): {line!r}")
    return int(parts[0]), np.array([float(v) for v in parts[1:]], dtype=np.float64).reshape(-1, 2)
