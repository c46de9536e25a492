"""Stage units in the plan: what each post-generation stage will make, keep and supersede.

A stage output is a unit like an image: the segment stage makes one unit per planned image, its
fingerprint (:func:`diffspec.plan.stage_identity.segment_fingerprint`) covering the stage kind,
the detector and segmenter (source, revision, dtype, a local folder's content), every parameter
that changes boxes or masks, the per-class text and the image's own fingerprint. So changing a
mask rule re-plans the masks of every image and nothing else; changing an image re-plans that
image and its masks; a second plan after `apply` has nothing to create.

The catalog's ``segment`` stage table records, per unit, one row per detection (or one row
with no detection for an image in which nothing was found); a unit is done when any row with
its ``segment_fingerprint`` is in the table (a batch is one atomic Parquet part, so a unit's
rows are all there or none are). Rows of units the spec no longer asks for stay in the
catalog, superseded: readers take each image's latest run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diffspec.catalog.store import Catalog
from diffspec.content import default_cache
from diffspec.plan.stage_identity import (
    DetectParams,
    HFModelRef,
    MaskFilter,
    detection_fingerprint,
    detector_prompt,
    segment_fingerprint,
)
from diffspec.spec.loader import PLACEHOLDER, LoadedSpec
from diffspec.tables.sources import local_folder

SEGMENT_STAGE = "segment"  # the stage, and its catalog table (catalog/stages/segment/)
# Seconds per image when the catalog has no record yet: Grounding DINO base + SAM ViT-B at
# 1024 px, measured by users at roughly 0.1-0.3 s on a current GPU and several seconds on a CPU.
_SEGMENT_SECONDS = {"cuda": 0.25, "cpu": 4.0}


@dataclass(frozen=True, slots=True)
class SegmentUnit:
    """Boxes and masks of one image, for one class's text."""

    fingerprint: str  # the unit: segment_fingerprint(segmenter, mask rules, detection fingerprint)
    detection_fingerprint: str
    image_fingerprint: str
    class_name: str
    text: str  # what to find, as the spec renders it for the class


@dataclass(frozen=True, slots=True)
class StageClassPlan:
    stage: str
    class_name: str
    create: int
    keep: int
    after_images: int  # of `create`: units whose image this apply makes first
    est_seconds: float
    estimate_source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "create": self.create,
            "keep": self.keep,
            "after_images": self.after_images,
            "est_seconds": round(self.est_seconds, 3),
            "estimate_source": self.estimate_source,
        }


@dataclass(frozen=True, eq=False)
class SegmentPlan:
    """The segment stage's part of a plan: its models and parameters, and the units to make."""

    detector: HFModelRef
    segmenter: HFModelRef
    params: DetectParams
    mask_filter: MaskFilter
    batch_size: int
    device_kind: str
    classes: tuple[StageClassPlan, ...]
    create: tuple[SegmentUnit, ...]
    superseded: int  # recorded results of units the spec no longer asks for (kept, not read)

    stage = SEGMENT_STAGE

    @property
    def total_create(self) -> int:
        return len(self.create)

    @property
    def total_keep(self) -> int:
        return sum(c.keep for c in self.classes)

    @property
    def total_seconds(self) -> float:
        return sum(c.est_seconds for c in self.classes)

    def describe(self) -> str:
        return f"detector {self.detector.source}, segmenter {self.segmenter.source}, batch {self.batch_size}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "detector": self.detector.identity(),
            "segmenter": self.segmenter.identity(),
            "params": self.params.identity(),
            "mask_filter": self.mask_filter.identity(),
            "batch_size": self.batch_size,
            "create": self.total_create,
            "keep": self.total_keep,
            "superseded": self.superseded,
            "est_seconds": round(self.total_seconds, 3),
            "classes": [c.to_dict() for c in self.classes],
        }


def stage_model_ref(loaded: LoadedSpec, source: str, revision: str | None, dtype: str, remote: bool) -> HFModelRef:
    """A stage model as the plan identifies it: a local folder by absolute path and content."""
    folder = local_folder(source, loaded.root)
    if folder is not None:
        return HFModelRef(str(folder), None, dtype, True, remote, default_cache().folder_sha256(folder))
    return HFModelRef(source, revision, dtype, True, remote)


def segment_text(template: str, class_name: str, label: str) -> str:
    values = {"class": class_name, "label": label}
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def done_segments(catalog: Catalog) -> set[str]:
    """Segment fingerprints the catalog holds a result for."""
    if not catalog.exists() or not catalog.parts(SEGMENT_STAGE):
        return set()
    table = catalog.read_table(SEGMENT_STAGE, ["segment_fingerprint"])
    return set(table.column("segment_fingerprint").unique().to_pylist())


def _history_seconds(catalog: Catalog) -> float | None:
    """The median recorded seconds per image of the segment stage, if it ever ran here."""
    import pyarrow.compute as pc

    if not catalog.exists() or not catalog.parts(SEGMENT_STAGE):
        return None
    table = catalog.read_table(SEGMENT_STAGE, ["segment_fingerprint", "seconds"])
    if table.num_rows == 0:
        return None
    per_unit = table.group_by("segment_fingerprint").aggregate([("seconds", "max")])
    median = pc.approximate_median(per_unit.column("seconds_max")).as_py()
    return float(median) if median is not None else None


def plan_segment(
    loaded: LoadedSpec,
    images: Sequence[tuple[str, str, Sequence[str], Iterable[bool]]],
    catalog: Catalog,
    device_kind: str,
) -> SegmentPlan | None:
    """The segment stage's units over ``images``: per class (name, label, the fingerprints of the
    images it owns, whether each is still to be made), in the plan's class order."""
    stage = loaded.spec.stages.segment
    if stage is None:
        return None
    detector = stage_model_ref(loaded, stage.detector, stage.detector_revision, stage.dtype, stage.trust_remote_code)
    segmenter = stage_model_ref(loaded, stage.segmenter, stage.segmenter_revision, stage.dtype, stage.trust_remote_code)
    params = DetectParams(stage.box_threshold, stage.text_threshold, stage.max_boxes)
    mask_filter = MaskFilter(
        stage.min_area,
        stage.max_area,
        stage.dedup_iou,
        stage.merged_cover,
        stage.merged_fill,
        stage.merged_min_parts,
        stage.contained,
    )
    done = done_segments(catalog)
    recorded = _history_seconds(catalog)
    per_image, source = (recorded, "catalog") if recorded is not None else (_SEGMENT_SECONDS[device_kind], "table")
    planned: set[str] = set()
    create: list[SegmentUnit] = []
    classes: list[StageClassPlan] = []
    for name, label, fingerprints, to_make in images:
        text = segment_text(stage.text, name, label)
        prompt = detector_prompt(text)
        made_here = keep = after = 0
        for image_fp, pending in zip(fingerprints, to_make):
            det = detection_fingerprint(detector, params, prompt, image_fp)
            fp = segment_fingerprint(segmenter, mask_filter, det)
            if fp in planned:
                continue
            planned.add(fp)
            if fp in done:
                keep += 1
                continue
            create.append(SegmentUnit(fp, det, image_fp, name, text))
            made_here += 1
            after += int(bool(pending))
        classes.append(StageClassPlan(SEGMENT_STAGE, name, made_here, keep, after, made_here * per_image, source))
    batch = stage.batch_size or loaded.spec.budget.max_batch
    return SegmentPlan(
        detector,
        segmenter,
        params,
        mask_filter,
        int(batch),
        device_kind,
        tuple(classes),
        tuple(create),
        len(done - planned),
    )


def count_by_class(units: Iterable[SegmentUnit]) -> Counter[str]:
    return Counter(u.class_name for u in units)


def shown_source(ref: HFModelRef) -> str:
    return Path(ref.source).name if ref.content is not None else ref.source


# --------------------------------------------------------------------------- captions

CAPTIONS_STAGE = "captions"  # the stage and its catalog table (catalog/stages/captions/)
# Seconds per caption when the catalog has no record yet (gemma-3-1b-it, 64 new tokens).
_CAPTION_SECONDS = {"cuda": 0.5, "cpu": 6.0}


@dataclass(frozen=True, slots=True)
class CaptionUnit:
    fingerprint: str
    class_name: str
    source_text: str
    variation: int
    seed: int


@dataclass(frozen=True, eq=False)
class CaptionsPlan:
    """The captions stage's part of a plan. Classes whose prompts use ``{caption}`` make their
    images from these captions: while any of a class's captions is missing, its image units are
    pending (planned, with their fingerprints, once the captions exist)."""

    model: HFModelRef
    params: Any  # CaptionParams
    variations: int
    batch_size: int
    classes: tuple[StageClassPlan, ...]
    create: tuple[CaptionUnit, ...]
    superseded: int
    pending_classes: tuple[str, ...]  # classes whose images wait for captions

    stage = CAPTIONS_STAGE

    @property
    def total_create(self) -> int:
        return len(self.create)

    @property
    def total_keep(self) -> int:
        return sum(c.keep for c in self.classes)

    @property
    def total_seconds(self) -> float:
        return sum(c.est_seconds for c in self.classes)

    def describe(self) -> str:
        text = f"model {self.model.source}, {self.variations} per source text, batch {self.batch_size}"
        if self.pending_classes:
            text += f"; the images of {', '.join(self.pending_classes)} are planned once their captions exist"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "model": self.model.identity(),
            "params": {**self.params.identity(), "base_seed": self.params.base_seed},
            "variations": self.variations,
            "batch_size": self.batch_size,
            "create": self.total_create,
            "keep": self.total_keep,
            "superseded": self.superseded,
            "pending_classes": list(self.pending_classes),
            "est_seconds": round(self.total_seconds, 3),
            "classes": [c.to_dict() for c in self.classes],
        }


_WEIGHTING_CHARS = re.compile(r"([\\()\[\]])")


def literal_prompt_text(text: str) -> str:
    """``text`` with the prompt-weighting characters escaped, so it reads as it is written."""
    return _WEIGHTING_CHARS.sub(r"\\\1", text)


def caption_classes(loaded: LoadedSpec) -> list[str]:
    """Classes whose prompt templates use {caption}, in spec order."""
    return [
        name
        for name, cls in loaded.classes.items()
        if any("caption" in (m.group(1) for m in PLACEHOLDER.finditer(t)) for t in cls.templates)
    ]


def recorded_captions(catalog: Catalog) -> dict[str, str]:
    """Caption fingerprint -> caption text, of every caption the catalog holds (first row wins)."""
    if not catalog.exists() or not catalog.parts(CAPTIONS_STAGE):
        return {}
    table = catalog.read_table(CAPTIONS_STAGE, ["caption_fingerprint", "text"])
    out: dict[str, str] = {}
    for fp, text in zip(table.column("caption_fingerprint").to_pylist(), table.column("text").to_pylist()):
        out.setdefault(fp, text)
    return out


def with_caption_estimates(plan: CaptionsPlan, device_kind: str) -> CaptionsPlan:
    """The plan's time estimates for the device the execution decided on."""
    per_caption = _CAPTION_SECONDS.get(device_kind, _CAPTION_SECONDS["cpu"])
    classes = tuple(replace(c, est_seconds=c.create * per_caption) for c in plan.classes)
    return replace(plan, classes=classes)


def plan_captions(loaded: LoadedSpec, catalog: Catalog) -> tuple[CaptionsPlan | None, dict[str, tuple[str, ...]]]:
    """The captions stage's units, and per class using {caption} the caption texts when all
    of them exist (a class missing any is pending)."""
    from diffspec.plan.caption_identity import CaptionParams, caption_fingerprint, caption_seed, text_fingerprint

    stage = loaded.spec.stages.captions
    if stage is None:
        return None, {}
    model = stage_model_ref(loaded, stage.model, stage.revision, stage.dtype, stage.trust_remote_code)
    params = CaptionParams(
        stage.instruction, stage.temperature, stage.top_p, stage.top_k, stage.max_new_tokens, stage.seed
    )
    recorded = recorded_captions(catalog)
    planned: set[str] = set()
    create: list[CaptionUnit] = []
    classes: list[StageClassPlan] = []
    ready: dict[str, tuple[str, ...]] = {}
    pending: list[str] = []
    for name in caption_classes(loaded):
        cls = loaded.classes[name]
        text = segment_text(stage.text, name, cls.label)
        source_fp = text_fingerprint(text)
        made_here = keep = 0
        texts: list[str] = []
        for v in range(stage.variations):
            seed = caption_seed(params.base_seed, text, v)
            fp = caption_fingerprint(model, params, seed, source_fp)
            if fp in recorded:
                texts.append(recorded[fp])
                if fp not in planned:
                    keep += 1
            elif fp not in planned:
                create.append(CaptionUnit(fp, name, text, v, seed))
                made_here += 1
            planned.add(fp)
        if len(texts) == stage.variations:
            # Empty replies (a model that said nothing usable) are dropped: no blank prompt. A
            # model's brackets are words, not prompt weighting: escaped as literal (\( \)).
            ready[name] = tuple(literal_prompt_text(t) for t in texts if t.strip())
        else:
            pending.append(name)
        classes.append(StageClassPlan(CAPTIONS_STAGE, name, made_here, keep, 0, 0.0, "table"))
    batch = stage.batch_size or loaded.spec.budget.max_batch
    plan = CaptionsPlan(
        model,
        params,
        stage.variations,
        int(batch),
        tuple(classes),
        tuple(create),
        len(set(recorded) - planned),
        tuple(pending),
    )
    return plan, ready
