"""Text-prompted segmentation on tiny Grounding DINO + SAM loaded through from_pretrained.

Random weights make garbage detections (near-1 scores on noise), so the tests check shapes,
bounds, thresholds, batching and the box -> SAM path with boxes given directly, never what
was found.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

try:
    from tiny_stage_models import *  # noqa: F403
except ImportError:  # pragma: no cover
    from tests.integration.tiny_stage_models import *  # noqa: F403

from diffspec.errors import GenerationError, StageError
from diffspec.stages.hfload import HFModelRef
from diffspec.stages.masks import MaskFilter, filter_masks
from diffspec.stages.segment import (
    Detector,
    DetectParams,
    Segmenter,
    TextSegmenter,
    detection_fingerprint,
    detector_prompt,
    segment_fingerprint,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def fruit_image(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    """A textured background with a few coloured discs ("fruit")."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(90, 160, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        r = int(rng.integers(5, 12))
        cx, cy = int(rng.integers(r, width - r)), int(rng.integers(r, height - r))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


@pytest.fixture(scope="module")
def segmenter_pair(tiny_dino, tiny_sam) -> TextSegmenter:
    return TextSegmenter.load(HFModelRef(str(tiny_dino)), HFModelRef(str(tiny_sam)))


def test_detector_boxes_are_in_the_image_sorted_and_thresholded(segmenter_pair: TextSegmenter) -> None:
    detector = segmenter_pair.detector
    images = [fruit_image(0), fruit_image(1), fruit_image(2, 80, 48)]
    prompts = ["plum", "Asparagus", "a cat"]
    low = detector.detect(images, prompts, DetectParams(box_threshold=0.3, text_threshold=0.25))
    assert len(low) == 3 and sum(len(d) for d in low) > 0  # random weights still give boxes at 0.3
    for image, found in zip(images, low):
        assert len(found) <= detector.model.config.num_queries
        scores = [d.score for d in found]
        assert scores == sorted(scores, reverse=True)
        for d in found:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
            assert 0.3 < d.score <= 1.0
            cx, cy, w, h = d.yolo_box(image.width, image.height)
            assert 0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1
            assert "[SEP]" not in d.label
    high = detector.detect(images, prompts, DetectParams(box_threshold=0.999))
    for lo, hi in zip(low, high):
        assert {d.box for d in hi} <= {d.box for d in lo} and len(hi) <= len(lo)
    assert detector.detect(images, prompts, DetectParams(box_threshold=1.0)) == [(), (), ()]
    capped = detector.detect(images, prompts, DetectParams(box_threshold=0.3, max_boxes=2))
    assert [c for c in capped] == [found[:2] for found in low]


def test_sam_masks_for_given_boxes_in_one_call_with_ragged_box_lists(segmenter_pair: TextSegmenter) -> None:
    sam = segmenter_pair.segmenter
    images = [fruit_image(3), fruit_image(4, 80, 48), fruit_image(5, 50, 70)]
    boxes = [[(5, 5, 30, 30), (10, 12, 60, 50)], [], [(0, 0, 40, 40), (3, 3, 20, 20), (10, 30, 45, 69)]]
    out = sam.segment(images, boxes)
    assert [m.masks.shape for m in out] == [(2, 64, 64), (0, 48, 80), (3, 70, 50)]
    assert [m.scores.shape for m in out] == [(2,), (0,), (3,)]
    assert all(m.masks.dtype == bool for m in out)
    assert any(m.masks.any() for m in out)
    # padding the short box list does not change its masks: alone it gives the same
    alone = sam.segment(images[:1], boxes[:1])[0]
    assert np.array_equal(alone.masks, out[0].masks)
    np.testing.assert_allclose(alone.scores, out[0].scores, rtol=1e-5, atol=1e-6)
    # different boxes, different masks: the prompt reaches the mask decoder
    assert not np.array_equal(out[0].masks[0], out[0].masks[1])


def test_full_run_returns_detections_masks_and_filter_outcome(segmenter_pair: TextSegmenter) -> None:
    images = [fruit_image(i) for i in range(3)] + [fruit_image(9, 80, 48)]
    prompts = ["plum", "plum.", "Bell peppers", "asparagus"]
    params = MaskFilter(min_area=0.002, max_area=0.6)
    results = segmenter_pair.run(images, prompts, DetectParams(box_threshold=0.3), params, batch_size=3)
    assert len(results) == 4
    assert [r.prompt for r in results] == ["plum.", "plum.", "bell peppers.", "asparagus."]
    for image, r in zip(images, results):
        n = len(r.detections)
        assert (r.width, r.height) == image.size
        assert r.masks.shape == (n, image.height, image.width) and r.mask_scores.shape == (n,)
        assert set(r.kept) | {i for i, _ in r.outcome.dropped} == set(range(n))
        assert r.outcome == filter_masks(r.masks, [d.score for d in r.detections], params)
        assert r.kept_masks().shape == (len(r.kept), image.height, image.width)
    assert sum(len(r.kept) for r in results) > 0


def test_results_do_not_depend_on_batch_size_or_batch_mates(segmenter_pair: TextSegmenter) -> None:
    images = [fruit_image(10), fruit_image(11, 80, 48), fruit_image(12), fruit_image(13)]
    prompts = ["plum", "plum", "radish", "plum"]
    together = segmenter_pair.run(images, prompts, batch_size=4)
    alone = [segmenter_pair.run([im], [p], batch_size=1)[0] for im, p in zip(images, prompts)]
    for a, b in zip(together, alone):
        assert len(a.detections) == len(b.detections)
        np.testing.assert_allclose([d.box for d in a.detections], [d.box for d in b.detections], atol=1e-3)
        np.testing.assert_allclose([d.score for d in a.detections], [d.score for d in b.detections], atol=1e-5)
        assert a.masks.shape == b.masks.shape
        assert (a.masks != b.masks).mean() < 1e-3 if a.masks.size else True
        assert a.kept == b.kept


def test_fingerprints_split_detection_from_mask_rules(tiny_dino, tiny_sam) -> None:
    dino, sam = HFModelRef(str(tiny_dino)), HFModelRef(str(tiny_sam))
    det = detection_fingerprint(dino, DetectParams(), "Plum", "img-fp")
    assert det == detection_fingerprint(dino, DetectParams(), "plum.", "img-fp")  # as the detector sees it
    assert det != detection_fingerprint(dino, DetectParams(box_threshold=0.35), "plum", "img-fp")
    assert det != detection_fingerprint(dino, DetectParams(text_threshold=0.3), "plum", "img-fp")
    assert det != detection_fingerprint(dino, DetectParams(), "plums", "img-fp")
    assert det != detection_fingerprint(dino, DetectParams(), "plum", "img-fp-2")
    assert det != detection_fingerprint(
        HFModelRef("IDEA-Research/grounding-dino-tiny"), DetectParams(), "plum", "img-fp"
    )
    seg = segment_fingerprint(sam, MaskFilter(), det)
    assert seg != segment_fingerprint(sam, MaskFilter(min_area=0.01), det)
    assert seg != segment_fingerprint(sam, MaskFilter(), "other-detections")
    assert seg != segment_fingerprint(HFModelRef("facebook/sam-vit-huge"), MaskFilter(), det)


def test_errors_name_what_is_wrong(tmp_path, segmenter_pair: TextSegmenter, tiny_dino) -> None:
    with pytest.raises(StageError, match="2 images but 1 prompts"):
        segmenter_pair.run([fruit_image(0)] * 2, ["plum"])
    with pytest.raises(StageError, match="expected a PIL image"):
        segmenter_pair.run([np.zeros((4, 4, 3))], ["plum"])
    with pytest.raises(StageError, match="empty"):
        detector_prompt("  ")
    with pytest.raises(StageError, match="box_threshold"):
        DetectParams(box_threshold=2)
    sam2 = tmp_path / "sam2"
    sam2.mkdir()
    (sam2 / "config.json").write_text(json.dumps({"model_type": "sam2"}), encoding="utf-8")
    with pytest.raises(GenerationError, match="torchvision"):
        Segmenter(HFModelRef(str(sam2)))
    with pytest.raises(GenerationError, match="not a folder"):
        Detector(HFModelRef(str(tmp_path / "nothing-here")))
    with pytest.raises(GenerationError, match="cannot load segmenter"):
        Segmenter(HFModelRef(str(tmp_path)))


def test_a_hub_checkpoint_that_is_not_cached_is_a_clear_offline_error() -> None:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 before huggingface_hub is imported (no network is used here)")
    with pytest.raises(GenerationError, match="not available offline"):
        Detector(HFModelRef("IDEA-Research/grounding-dino-base"))
