"""What identifies a stage's output, without torch: the model references, the parameters that
change outputs, and the fingerprints built from them.

They live in ``plan/`` because `plan` computes every stage unit's fingerprint (a CPU-only CI job
must be able to plan a segmentation stage); ``diffspec.stages`` runs the models and imports
these types from here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffspec.errors import GenerationError, StageError
from diffspec.plan.unit import canonical_json, normalize_prompt
from diffspec.tables.sources import looks_like_path

DETECT_KIND = "detect"
SEGMENT_KIND = "segment"
DETECT_CANONICAL = "diffspec-detect/v1"
SEGMENT_CANONICAL = "diffspec-segment/v1"

#: transformers picks the torchvision image processors when torchvision is installed and the PIL
#: ones otherwise; they do not give identical pixels. The stages always ask for PIL, so a mask
#: does not change with whether torchvision happens to be installed (and it need not be).
IMAGE_BACKEND = "pil"


@dataclass(frozen=True, slots=True)
class HFModelRef:
    """A transformers checkpoint a stage loads: everything that decides its weights and dtype."""

    source: str
    revision: str | None = None
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU (see generate.loading.resolve_dtype)
    use_safetensors: bool = True
    trust_remote_code: bool = False
    # sha256 of a local folder's files (diffspec.content): replacing the weights at the same
    # path re-plans what the model made. None for hub ids, which (id, revision) identify.
    content: str | None = None

    def __post_init__(self) -> None:
        if not self.source or not self.source.strip():
            raise GenerationError("a stage model needs a `source` (a hub id or a local folder)")

    @property
    def is_local(self) -> bool:
        return looks_like_path(self.source)

    def identity(self) -> dict[str, Any]:
        """The fields that change outputs, for fingerprints (a local folder has no revision)."""
        out: dict[str, Any] = {
            "source": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "use_safetensors": self.use_safetensors,
            "trust_remote_code": self.trust_remote_code,
        }
        if self.content is not None:  # only when set, so hub ids keep the fingerprints they had
            out["content"] = self.content
        return out

    def location(self) -> str:
        return str(Path(self.source).expanduser()) if self.is_local else self.source

    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision and not self.is_local:
            kwargs["revision"] = self.revision
        return kwargs


@dataclass(frozen=True, slots=True)
class MaskFilter:
    """Parameters of :func:`filter_masks` (all fractions in [0, 1]); defaults as the fruit seed."""

    min_area: float = 0.0  # fraction of the image's pixels
    max_area: float = 1.0
    dedup_iou: float = 0.7  # drop when IoU with a higher-scored kept mask is above this
    merged_cover: float = 0.8  # a part lies inside M for at least this fraction of its area
    merged_fill: float = 0.6  # the parts together cover at least this fraction of M
    merged_min_parts: int = 2
    contained: float = 0.9  # nested: at least this fraction of a mask inside a larger kept one

    def __post_init__(self) -> None:
        for name in ("min_area", "max_area", "dedup_iou", "merged_cover", "merged_fill", "contained"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise StageError(f"segment: `{name}` must be a fraction in [0, 1], got {value!r}")
        if self.min_area > self.max_area:
            raise StageError(f"segment: `min_area` ({self.min_area}) is above `max_area` ({self.max_area})")
        if not (isinstance(self.merged_min_parts, int) and self.merged_min_parts >= 2):
            raise StageError(f"segment: `merged_min_parts` must be an integer >= 2, got {self.merged_min_parts!r}")

    def identity(self) -> dict[str, float | int]:
        return {
            "min_area": float(self.min_area),
            "max_area": float(self.max_area),
            "dedup_iou": float(self.dedup_iou),
            "merged_cover": float(self.merged_cover),
            "merged_fill": float(self.merged_fill),
            "merged_min_parts": self.merged_min_parts,
            "contained": float(self.contained),
        }


def detector_prompt(text: str) -> str:
    """Grounding DINO's form of a prompt: whitespace-normalised, lower case, ending in a period."""
    norm = normalize_prompt(text).lower()
    if not norm:
        raise StageError("segment: the detector prompt is empty")
    return norm if norm.endswith(".") else norm + "."


@dataclass(frozen=True, slots=True)
class DetectParams:
    box_threshold: float = 0.3  # a box's best token score must exceed this (Lang-SAM: 0.3)
    text_threshold: float = 0.25  # tokens above this name the box's label (Lang-SAM: 0.25)
    max_boxes: int | None = None  # keep at most this many boxes per image, best first

    def __post_init__(self) -> None:
        for name in ("box_threshold", "text_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise StageError(f"segment: `{name}` must be in [0, 1], got {value!r}")
        if self.max_boxes is not None and not (isinstance(self.max_boxes, int) and self.max_boxes >= 1):
            raise StageError(f"segment: `max_boxes` must be a positive integer or unset, got {self.max_boxes!r}")

    def identity(self) -> dict[str, Any]:
        return {
            "box_threshold": float(self.box_threshold),
            "text_threshold": float(self.text_threshold),
            "max_boxes": self.max_boxes,
        }


def _sha(prefix: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prefix + "\n" + canonical_json(body)).encode("utf-8")).hexdigest()


def detection_fingerprint(detector: HFModelRef, params: DetectParams, prompt: str, image_fingerprint: str) -> str:
    """The boxes of one image: detector model, thresholds, the prompt as the detector sees it,
    the image processor backend, and the image's fingerprint."""
    return _sha(
        DETECT_CANONICAL,
        {
            "kind": DETECT_KIND,
            "model": detector.identity(),
            "image_backend": IMAGE_BACKEND,
            "params": params.identity(),
            "prompt": detector_prompt(prompt),
            "input": image_fingerprint,
        },
    )


def segment_fingerprint(segmenter: HFModelRef, mask_filter: MaskFilter, detection_fp: str) -> str:
    """The kept masks of one image: segmenter model, the mask rules' parameters and the
    fingerprint of the detections they start from (which covers the image and the detector).
    Changing only ``min_area`` changes this and not :func:`detection_fingerprint`."""
    return _sha(
        SEGMENT_CANONICAL,
        {
            "kind": SEGMENT_KIND,
            "model": segmenter.identity(),
            "image_backend": IMAGE_BACKEND,
            "multimask_output": False,
            "filter": mask_filter.identity(),
            "input": detection_fp,
        },
    )
