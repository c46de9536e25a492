"""Text-prompted segmentation, Lang-SAM built from transformers (the fruit seed's labels).

For each image and its text prompt: Grounding DINO finds boxes
(``post_process_grounded_object_detection`` with ``box_threshold``/``text_threshold``, Lang-SAM's
defaults 0.3 and 0.25), SAM makes one mask per box (box prompts, ``multimask_output=False`` as
Lang-SAM does, ``post_process_masks`` back to the image size), then
:func:`diffspec.stages.masks.filter_masks` applies the area, duplicate, merge and nesting rules
with the detector's scores. Several images go through each detector call and each segmenter
call (``batch_size`` images per call; SAM gets every box of those images in one call, the box
lists padded to the longest by repeating a box, whose extra masks are discarded).

Models: any Grounding DINO checkpoint transformers loads through
``AutoModelForZeroShotObjectDetection`` with a processor that has
``post_process_grounded_object_detection`` (``IDEA-Research/grounding-dino-base``, the Lang-SAM
default, or ``-tiny``), and a ``SamModel`` checkpoint (``facebook/sam-vit-base``, ``-large``,
``-huge``). The fruit seed used SAM 2.1 (Hiera Large) through lang-sam; transformers' SAM 2
image processor needs torchvision, which diffspec does not depend on, so SAM 2 checkpoints
are refused with a message saying so. Image processors are loaded with the PIL backend
(:data:`diffspec.stages.hfload.IMAGE_BACKEND`).

Prompts are lower-cased and end with a period, as Grounding DINO expects ("plums."); several
classes in one prompt are separated by periods ("plum. leaf.").

Nothing here is wired to ``plan``/``apply`` yet (see docs/stages.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffspec.errors import GenerationError, StageError
from diffspec.plan.stage_identity import (
    DETECT_KIND,
    SEGMENT_KIND,
    DetectParams,
    detection_fingerprint,
    detector_prompt,
    segment_fingerprint,
)
from diffspec.stages.hfload import IMAGE_BACKEND, HFModelRef, load
from diffspec.stages.masks import FilterOutcome, MaskFilter, filter_masks

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_SEGMENTER",
    "DETECT_KIND",
    "SEGMENT_KIND",
    "DetectParams",
    "Detection",
    "Detector",
    "ImageMasks",
    "SegmentResult",
    "Segmenter",
    "TextSegmenter",
    "detection_fingerprint",
    "detector_prompt",
    "segment_fingerprint",
]


DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-base"  # Lang-SAM's default detector
DEFAULT_SEGMENTER = "facebook/sam-vit-base"


@dataclass(frozen=True, slots=True)
class Detection:
    """A detector box in pixels (x0, y0, x1, y1), clipped to the image, with its score and phrase."""

    box: tuple[float, float, float, float]
    score: float
    label: str

    def yolo_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Normalised (x_center, y_center, width, height), YOLO's detection label."""
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)


@dataclass(frozen=True, eq=False)
class ImageMasks:
    """SAM's masks for one image: ``masks`` (n, height, width) bool, ``scores`` (n,) predicted IoU."""

    masks: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True, eq=False)
class SegmentResult:
    """Everything the stage found in one image, before and after the mask rules."""

    width: int
    height: int
    prompt: str
    detections: tuple[Detection, ...]
    masks: np.ndarray  # (n, height, width) bool, one per detection
    mask_scores: np.ndarray  # (n,) SAM's predicted IoU
    outcome: FilterOutcome
    seconds: float = field(default=0.0)

    @property
    def kept(self) -> tuple[int, ...]:
        return self.outcome.kept

    def kept_masks(self) -> np.ndarray:
        return self.masks[list(self.kept)] if self.kept else np.zeros((0, self.height, self.width), dtype=bool)


# --------------------------------------------------------------------------- models


def _rgb(images: Sequence[Any]) -> list[Any]:
    from PIL import Image

    out = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise StageError(f"segment: image {i} is a {type(image).__name__}, expected a PIL image")
        out.append(image if image.mode == "RGB" else image.convert("RGB"))
    return out


def _clean_label(phrase: Any, special: set[str]) -> str:
    """The detected phrase without tokenizer specials ("plum [SEP]" -> "plum")."""
    return " ".join(w for w in str(phrase).split() if w not in special).rstrip(" .")


class Detector:
    """Grounding DINO: boxes for text prompts, ``len(images)`` images per forward call."""

    def __init__(self, model: HFModelRef, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        from diffspec.generate.loading import resolve_dtype

        self.ref, self.device = model, device
        self.processor = load(
            "detector processor", model, AutoProcessor.from_pretrained, weights=False, backend=IMAGE_BACKEND
        )
        if not hasattr(self.processor, "post_process_grounded_object_detection"):
            raise GenerationError(
                f"detector {model.source!r} has a {type(self.processor).__name__}, which cannot post-process "
                "grounded detections; use a Grounding DINO checkpoint (e.g. IDEA-Research/grounding-dino-base)"
            )
        self.dtype = resolve_dtype(model.dtype, device)
        self.model = (
            load("detector", model, AutoModelForZeroShotObjectDetection.from_pretrained, dtype=self.dtype)
            .to(device)
            .eval()
        )
        self._torch = torch

    def detect(
        self, images: Sequence[Any], prompts: Sequence[str], params: DetectParams
    ) -> list[tuple[Detection, ...]]:
        if len(images) != len(prompts):
            raise StageError(f"segment: {len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        torch = self._torch
        images = _rgb(images)
        texts = [detector_prompt(p) for p in prompts]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            outputs = self.model(**inputs)
        results = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=params.box_threshold,
            text_threshold=params.text_threshold,
            target_sizes=[(im.height, im.width) for im in images],
        )
        special = set(getattr(self.processor.tokenizer, "all_special_tokens", ()))
        out = []
        for image, result in zip(images, results):
            scores = result["scores"].float().cpu().numpy()
            boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
            labels = [
                _clean_label(t, special)
                for t in (result["text_labels"] if "text_labels" in result else [""] * len(scores))
            ]
            order = np.argsort(-scores, kind="stable")
            found = []
            for i in order:
                x0, y0, x1, y1 = (float(v) for v in boxes[i])
                x0, x1 = sorted((min(max(x0, 0.0), image.width), min(max(x1, 0.0), image.width)))
                y0, y1 = sorted((min(max(y0, 0.0), image.height), min(max(y1, 0.0), image.height)))
                if x1 - x0 <= 0 or y1 - y0 <= 0:
                    continue  # a box wholly outside the image, or degenerate: nothing for SAM to cut
                found.append(Detection((x0, y0, x1, y1), float(scores[i]), str(labels[i])))
                if params.max_boxes is not None and len(found) >= params.max_boxes:
                    break
            out.append(tuple(found))
        return out


class Segmenter:
    """SAM: one mask per box prompt, the boxes of ``len(images)`` images in one forward call."""

    def __init__(self, model: HFModelRef, device: str = "cpu") -> None:
        import torch
        from transformers import AutoConfig, AutoProcessor, SamModel

        from diffspec.generate.loading import resolve_dtype

        self.ref, self.device = model, device
        config = load("segmenter config", model, AutoConfig.from_pretrained, weights=False)
        if getattr(config, "model_type", None) != "sam":
            kind = getattr(config, "model_type", "?")
            hint = (
                " (SAM 2's image processor in transformers needs torchvision, which diffspec does not depend on)"
                if str(kind).startswith("sam2") or "sam3" in str(kind)
                else ""
            )
            raise GenerationError(
                f"segmenter {model.source!r} is a {kind!r} model; the segment stage runs SAM checkpoints "
                f"(model_type 'sam', e.g. facebook/sam-vit-base){hint}"
            )
        self.processor = load(
            "segmenter processor", model, AutoProcessor.from_pretrained, weights=False, backend=IMAGE_BACKEND
        )
        self.dtype = resolve_dtype(model.dtype, device)
        self.model = load("segmenter", model, SamModel.from_pretrained, dtype=self.dtype).to(device).eval()
        self._torch = torch

    def segment(
        self, images: Sequence[Any], boxes: Sequence[Sequence[tuple[float, float, float, float]]]
    ) -> list[ImageMasks]:
        if len(images) != len(boxes):
            raise StageError(f"segment: {len(images)} images but {len(boxes)} box lists")
        images = _rgb(images)
        out: list[ImageMasks | None] = [None] * len(images)
        todo = [i for i, b in enumerate(boxes) if len(b)]
        for i, image in enumerate(images):
            if not len(boxes[i]):
                out[i] = ImageMasks(np.zeros((0, image.height, image.width), dtype=bool), np.zeros(0, dtype=np.float32))
        if todo:
            torch = self._torch
            longest = max(len(boxes[i]) for i in todo)
            # SAM takes a rectangular (images, boxes, 4) tensor: pad short lists with their first box
            padded = [
                [list(map(float, b)) for b in boxes[i]] + [list(map(float, boxes[i][0]))] * (longest - len(boxes[i]))
                for i in todo
            ]
            inputs = self.processor(images=[images[i] for i in todo], input_boxes=padded, return_tensors="pt")
            with torch.inference_mode():
                outputs = self.model(
                    pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                    input_boxes=inputs["input_boxes"].to(self.device, self.dtype),
                    multimask_output=False,
                )
            masks = self.processor.post_process_masks(
                outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
            )
            scores = outputs.iou_scores.float().cpu().numpy()
            for j, i in enumerate(todo):
                n = len(boxes[i])
                out[i] = ImageMasks(masks[j][:n, 0].numpy().astype(bool), scores[j, :n, 0].astype(np.float32))
        return [m for m in out if m is not None]


def _size_batches(images: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most ``batch_size`` images of one size, in first-seen order.

    Grounding DINO's processor pads a batch to its largest image and the Swin backbone sees the
    padding, so an image's boxes would depend on its batch mates' sizes. Batching by size keeps
    them the same whatever else is in the batch (a class's generated images share one size).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((image.width, image.height), []).append(i)
    return [ids[k : k + batch_size] for ids in groups.values() for k in range(0, len(ids), batch_size)]


class TextSegmenter:
    """Lang-SAM: :class:`Detector` then :class:`Segmenter` then the mask rules, batch by batch."""

    def __init__(self, detector: Detector, segmenter: Segmenter) -> None:
        self.detector, self.segmenter = detector, segmenter

    @classmethod
    def load(cls, detector: HFModelRef, segmenter: HFModelRef, device: str = "cpu") -> TextSegmenter:
        return cls(Detector(detector, device), Segmenter(segmenter, device))

    def run(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        detect: DetectParams | None = None,
        mask_filter: MaskFilter | None = None,
        batch_size: int = 4,
    ) -> list[SegmentResult]:
        """One :class:`SegmentResult` per image, in order; ``batch_size`` images per model call
        (default parameters: Lang-SAM's thresholds and :class:`MaskFilter`'s defaults)."""
        detect = detect or DetectParams()
        mask_filter = mask_filter or MaskFilter()
        if batch_size < 1:
            raise StageError(f"segment: batch size must be >= 1, got {batch_size}")
        if len(images) != len(prompts):
            raise StageError(f"segment: {len(images)} images but {len(prompts)} prompts")
        images = _rgb(images)
        results: list[SegmentResult | None] = [None] * len(images)
        for chunk_ids in _size_batches(images, batch_size):
            chunk = [images[i] for i in chunk_ids]
            chunk_prompts = [prompts[i] for i in chunk_ids]
            began = time.perf_counter()
            detections = self.detector.detect(chunk, chunk_prompts, detect)
            masks = self.segmenter.segment(chunk, [[d.box for d in found] for found in detections])
            seconds = (time.perf_counter() - began) / len(chunk)
            for i, image, prompt, found, got in zip(chunk_ids, chunk, chunk_prompts, detections, masks):
                outcome = filter_masks(got.masks, [d.score for d in found], mask_filter)
                results[i] = SegmentResult(
                    width=image.width,
                    height=image.height,
                    prompt=detector_prompt(prompt),
                    detections=found,
                    masks=got.masks,
                    mask_scores=got.scores,
                    outcome=outcome,
                    seconds=seconds,
                )
        return [r for r in results if r is not None]
