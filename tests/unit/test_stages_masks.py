"""Mask post-processing on synthetic masks with known answers; RLE and polygon round trips."""

from __future__ import annotations

import numpy as np
import pytest

from diffspec.errors import StageError
from diffspec.stages.masks import (
    MaskFilter,
    Rle,
    filter_masks,
    mask_iou,
    mask_to_polygons,
    pairwise_intersections,
    parse_yolo_segment_line,
    polygons_to_mask,
    rle_area,
    rle_decode,
    rle_encode,
    rle_from_string,
    rle_to_string,
    yolo_segment_line,
)


def rect(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Pixels [y0, y1) x [x0, x1) set."""
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# --------------------------------------------------------------------------- filter rules


def test_area_rule_drops_tiny_huge_and_empty_masks_by_fraction_of_the_image() -> None:
    masks = [
        rect(100, 100, 0, 0, 2, 5),  # 10 px = 0.001 of the image
        rect(100, 100, 10, 10, 30, 35),  # 500 px = 0.05
        rect(100, 100, 0, 0, 90, 100),  # 9000 px = 0.9
        np.zeros((100, 100), dtype=bool),
    ]
    out = filter_masks(masks, [0.9, 0.5, 0.8, 0.99], MaskFilter(min_area=0.01, max_area=0.6))
    assert out.kept == (1,)
    assert dict(out.dropped) == {0: "too_small", 2: "too_large", 3: "empty"}
    # the boundary is inclusive: exactly min_area is kept
    assert filter_masks(masks[1:2], [1.0], MaskFilter(min_area=0.05)).kept == (0,)


def test_dedup_keeps_the_higher_score_when_iou_is_above_the_threshold() -> None:
    a = rect(20, 20, 0, 0, 10, 10)
    near = rect(20, 20, 0, 1, 10, 11)  # IoU 90/110 = 0.818
    far = rect(20, 20, 0, 2, 10, 12)  # IoU 80/120 = 0.667
    assert mask_iou(a, near) == pytest.approx(90 / 110)
    out = filter_masks([a, near], [0.5, 0.9], MaskFilter())
    assert out.kept == (1,) and out.reason(0) == "duplicate"
    out = filter_masks([a, near], [0.9, 0.5], MaskFilter())
    assert out.kept == (0,) and out.reason(1) == "duplicate"
    assert filter_masks([a, far], [0.5, 0.9], MaskFilter()).kept == (0, 1)


def test_dedup_threshold_is_strictly_above() -> None:
    a = rect(1, 40, 0, 0, 1, 17)
    b = rect(1, 40, 0, 3, 1, 20)  # inter 14, union 20: IoU exactly 0.7
    assert mask_iou(a, b) == pytest.approx(0.7)
    params = MaskFilter(contained=1.0)
    assert filter_masks([a, b], [0.9, 0.8], params).kept == (0, 1)
    assert filter_masks([a, b], [0.9, 0.8], MaskFilter(dedup_iou=0.69, contained=1.0)).kept == (0,)


def test_dedup_is_greedy_from_the_best_score_and_stable_on_ties() -> None:
    a = rect(20, 30, 0, 0, 10, 10)
    b = rect(20, 30, 0, 1, 10, 11)  # duplicate of a and of c
    c = rect(20, 30, 0, 2, 10, 12)  # not a duplicate of a (IoU 0.667)
    out = filter_masks([a, b, c], [0.6, 0.9, 0.6], MaskFilter(contained=1.0))
    assert out.kept == (1,)  # b suppresses both
    out = filter_masks([a, b, c], [0.9, 0.6, 0.9], MaskFilter(contained=1.0))
    assert out.kept == (0, 2)
    out = filter_masks([a, b], [0.5, 0.5], MaskFilter())
    assert out.kept == (0,)  # equal scores keep the earlier mask


def test_nested_masks_keep_the_top_level_object() -> None:
    fruit = disc(60, 60, 30, 30, 20)
    stem = disc(60, 60, 14, 30, 3)  # fully inside the fruit
    half_out = rect(60, 60, 25, 45, 35, 58)  # about half of it outside the fruit
    out = filter_masks([stem, fruit, half_out], [0.9, 0.5, 0.7], MaskFilter())
    assert out.kept == (1, 2)
    assert out.reason(0) == "nested"
    # "mostly" is the `contained` fraction: at 0.3, a mask 39% inside is nested too
    inside = pairwise_intersections(np.stack([half_out, fruit]))[0, 1] / half_out.sum()
    assert 0.3 < inside < 0.9
    assert filter_masks([stem, fruit, half_out], [0.9, 0.5, 0.7], MaskFilter(contained=0.3)).kept == (1,)


def test_a_mask_merging_two_objects_is_dropped_and_the_objects_kept() -> None:
    left = disc(60, 100, 30, 25, 15)
    right = disc(60, 100, 30, 75, 15)
    both = left | right | rect(60, 100, 28, 25, 32, 75)  # the two plums and a bridge between them
    out = filter_masks([both, left, right], [0.95, 0.6, 0.6], MaskFilter())
    assert out.kept == (1, 2)
    assert out.reason(0) == "merged"
    # the other order of rules would have kept the merge and dropped both plums as nested
    # one object inside the big mask is not a merge: the big mask stays, the small one is nested
    out = filter_masks([both, left], [0.95, 0.6], MaskFilter())
    assert out.kept == (0,) and out.reason(1) == "nested"


def test_small_parts_inside_a_whole_object_are_not_a_merge() -> None:
    fruit = disc(80, 80, 40, 40, 30)
    stem = disc(80, 80, 14, 40, 4)
    leaf = disc(80, 80, 20, 52, 5)
    out = filter_masks([fruit, stem, leaf], [0.5, 0.9, 0.9], MaskFilter())
    assert out.kept == (0,)  # parts fill far less than merged_fill of the fruit
    assert dict(out.dropped) == {1: "nested", 2: "nested"}
    # with merged_fill low enough, the same masks do count as a merge
    out = filter_masks([fruit, stem, leaf], [0.5, 0.9, 0.9], MaskFilter(merged_fill=0.01))
    assert out.kept == (1, 2) and out.reason(0) == "merged"


def test_merged_min_parts_and_cover_are_honoured() -> None:
    left = disc(60, 100, 30, 25, 15)
    right = disc(60, 100, 30, 75, 15)
    both = left | right
    assert filter_masks([both, left, right], [0.9, 0.5, 0.5], MaskFilter(merged_min_parts=3)).kept == (0,)
    # a part sticking out of the big mask for more than 1 - merged_cover is not inside it
    shifted = disc(60, 100, 30, 95, 15)
    out = filter_masks([left | shifted, left, shifted], [0.9, 0.5, 0.5], MaskFilter())
    assert out.reason(0) == "merged"  # shifted is still wholly inside the union
    out = filter_masks([left | right, left, shifted], [0.9, 0.5, 0.5], MaskFilter())
    assert 0 in out.kept  # only one part lies inside


def test_pairwise_intersections_are_exact_counts() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((5, 37, 41)) > 0.6
    inter = pairwise_intersections(masks)
    for i in range(5):
        for j in range(5):
            assert inter[i, j] == np.logical_and(masks[i], masks[j]).sum()
    assert pairwise_intersections(np.zeros((2, 4, 4), dtype=bool)).tolist() == [[0, 0], [0, 0]]


def test_filter_input_errors_are_stage_errors() -> None:
    with pytest.raises(StageError, match="2 masks but 1 scores"):
        filter_masks(np.zeros((2, 4, 4), dtype=bool), [0.5], MaskFilter())
    with pytest.raises(StageError, match="dedup_iou"):
        MaskFilter(dedup_iou=1.5)
    with pytest.raises(StageError, match="min_area"):
        MaskFilter(min_area=0.5, max_area=0.1)
    with pytest.raises(StageError, match="merged_min_parts"):
        MaskFilter(merged_min_parts=1)
    assert filter_masks(np.zeros((0, 4, 4), dtype=bool), [], MaskFilter()).kept == ()


# --------------------------------------------------------------------------- RLE


def test_rle_is_column_major_and_starts_with_zeros() -> None:
    assert rle_encode(np.array([[0, 1], [1, 1]])) == Rle((2, 2), (1, 3))
    assert rle_encode(np.array([[1, 0], [0, 0]])) == Rle((2, 2), (0, 1, 3))
    assert rle_encode(np.array([[1, 0, 0]])) == Rle((1, 3), (0, 1, 2))
    assert rle_encode(np.zeros((3, 2))).counts == (6,)
    assert rle_encode(np.ones((3, 2))).counts == (0, 6)
    assert rle_encode(np.array([[0, 1], [1, 1]])).to_coco() == {"size": [2, 2], "counts": [1, 3]}


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (13, 17), (64, 48)])
def test_rle_round_trips(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.1, 0.5, 0.97, 1.0):
        mask = rng.random(shape) < density
        rle = rle_encode(mask)
        assert rle_area(rle) == mask.sum()
        assert np.array_equal(rle_decode(rle), mask)
        again = rle_from_string(rle_to_string(rle), rle.size)
        assert again == rle


def test_rle_compressed_string_matches_coco() -> None:
    # pycocotools: encode(np.zeros((2, 2), order="F")) -> counts b"4"; runs [0, 1, 3] -> "01" + "3"
    assert rle_to_string(Rle((2, 2), (4,))) == "4"
    assert rle_to_string(Rle((2, 2), (0, 1, 3))) == "013"
    # a run longer than 31 takes more than one character, a negative delta sign-extends
    big = Rle((100, 100), (5000, 3000, 100, 1900))
    text = rle_to_string(big)
    assert len(text) > 4 and rle_from_string(text, (100, 100)) == big


def test_rle_decode_rejects_inconsistent_runs() -> None:
    with pytest.raises(StageError, match="sum to 5"):
        rle_decode(Rle((2, 2), (2, 3)))
    with pytest.raises(StageError, match="truncated"):
        rle_from_string("P", (2, 2))  # "P" - 48 = 32: the continuation bit, and nothing follows


# --------------------------------------------------------------------------- polygons


def test_rectangle_polygon_reads_back_exactly() -> None:
    mask = rect(40, 60, 5, 10, 25, 50)
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    poly = polygons[0]
    assert np.all((poly >= 0) & (poly <= 1))
    assert mask_iou(polygons_to_mask(polygons, 40, 60), mask) == 1.0
    # a consumer that scales by the size and truncates (Ultralytics) lands on the corner pixels
    xs = sorted({int(x * 60) for x in poly[:, 0]})
    ys = sorted({int(y * 40) for y in poly[:, 1]})
    assert xs == [10, 49] and ys == [5, 24]


def test_disc_and_blob_polygons_through_yolo_lines_read_back_with_iou_above_0_9() -> None:
    h, w = 120, 90
    shapes = {
        "disc": disc(h, w, 60, 45, 30),
        "small disc": disc(h, w, 20, 20, 6),
        "ring-less blob": disc(h, w, 60, 40, 25) | rect(h, w, 55, 40, 65, 85),
    }
    for name, mask in shapes.items():
        lines = [yolo_segment_line(3, p) for p in mask_to_polygons(mask)]
        read = [parse_yolo_segment_line(line) for line in lines]
        assert all(cls == 3 for cls, _ in read)
        back = polygons_to_mask([poly for _, poly in read], h, w)
        assert mask_iou(back, mask) >= 0.9, name
        simplified = [yolo_segment_line(0, p) for p in mask_to_polygons(mask, tolerance=1.0)]
        back = polygons_to_mask([parse_yolo_segment_line(s)[1] for s in simplified], h, w)
        assert mask_iou(back, mask) >= 0.9, name


def test_components_become_polygons_largest_first_and_specks_can_be_skipped() -> None:
    big = disc(50, 80, 25, 20, 15)
    small = rect(50, 80, 10, 60, 20, 70)
    speck = rect(50, 80, 45, 75, 46, 76)
    polygons = mask_to_polygons(big | small | speck)
    assert len(polygons) == 3
    assert mask_iou(polygons_to_mask(polygons[:1], 50, 80), big) > 0.95
    assert mask_iou(polygons_to_mask(polygons[1:2], 50, 80), small) == 1.0
    assert mask_iou(polygons_to_mask(polygons[2:], 50, 80), speck) == 1.0  # a single pixel survives
    assert len(mask_to_polygons(big | small | speck, min_pixels=5)) == 2
    assert mask_to_polygons(np.zeros((5, 5), dtype=bool)) == []


def test_a_one_pixel_line_still_becomes_a_polygon() -> None:
    line = rect(20, 20, 10, 2, 11, 18)
    polygons = mask_to_polygons(line)
    assert len(polygons) == 1
    assert mask_iou(polygons_to_mask(polygons, 20, 20), line) == 1.0


def test_yolo_line_errors() -> None:
    with pytest.raises(StageError, match="at least 3 points"):
        yolo_segment_line(0, np.array([[0.1, 0.1], [0.2, 0.2]]))
    with pytest.raises(StageError, match=r"\[0, 1\]"):
        yolo_segment_line(0, np.array([[0.1, 0.1], [1.2, 0.2], [0.3, 0.3]]))
    with pytest.raises(StageError, match="not a YOLO segment line"):
        parse_yolo_segment_line("0 0.1 0.2 0.3")


def test_rle_matches_pycocotools_both_ways() -> None:
    """The real consumer: pycocotools' C encoder and decoder agree with ours, string for string."""
    coco = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(11)
    masks = [rng.random((31, 47)) < d for d in (0.0, 0.05, 0.5, 0.95, 1.0)] + [disc(120, 90, 60, 45, 30)]
    for mask in masks:
        theirs = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = rle_encode(mask)
        assert rle_to_string(ours) == theirs["counts"].decode("ascii")
        assert list(theirs["size"]) == list(ours.size)
        assert int(coco.area(theirs)) == rle_area(ours)
        back = coco.decode({"size": list(ours.size), "counts": rle_to_string(ours).encode("ascii")})
        assert np.array_equal(back.astype(bool), mask)
        # and uncompressed counts (COCO's iscrowd form) convert to the same compressed RLE
        converted = coco.frPyObjects(ours.to_coco(), *ours.size)
        assert converted["counts"] == theirs["counts"]
