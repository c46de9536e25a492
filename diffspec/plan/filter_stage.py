"""The filters stage in the plan: per (image, filter) a unit, planned like the segment stage's.

Each entry of ``stages.filters`` becomes a :class:`~diffspec.plan.filter_identity.FilterConfig`;
every image a class owns (made, or to be made by this apply, top-ups included) gets one unit per
filter. A unit is done when the latest verdict of its filter on its image in the catalog's
``filters`` table carries the unit's fingerprint (diffspec.catalog.verdicts), so changing one
filter's threshold re-plans that filter's units only, changing it back re-plans them again (the
latest verdict must be the one the spec asks for), and a second plan after `apply` has nothing
to create.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import latest_filter_verdicts
from diffspec.plan.filter_identity import (
    FilterConfig,
    comparison_chain,
    existing_listing_hash,
    verdict_fingerprint,
)
from diffspec.plan.stages import StageClassPlan, shown_source, stage_model_ref
from diffspec.spec.loader import LoadedSpec
from diffspec.spec.model import FilterSpec

FILTERS_STAGE = "filters"
# Seconds per image: CLIP ViT-B/32 at 224 px assumed at 5 ms on a GPU and 50 ms on a CPU (no
# CLIP weights can be downloaded here to measure it); reading a 64 px PNG and its phash measured
# 2.3 ms on the 2-core VM this was built on, its gray statistics 0.14 ms.
_SECONDS = {
    "clip_score": {"cuda": 0.005, "cpu": 0.05},
    "classifier": {"cuda": 0.002, "cpu": 0.002},
    "near_duplicate": {"cuda": 0.002, "cpu": 0.002},
    "blank": {"cuda": 0.001, "cpu": 0.001},
    "sharpness": {"cuda": 0.001, "cpu": 0.001},
}


@dataclass(frozen=True, slots=True)
class FilterUnit:
    fingerprint: str
    kind: str
    image_fingerprint: str
    class_name: str


@dataclass(frozen=True, eq=False)
class FiltersPlan:
    """The filters' part of a plan: their configurations, in spec order, and the units to make.
    ``chains`` holds, per class with near-duplicate units to make, the class's images in unit
    index order (what a near-duplicate verdict compares with); ``existing`` its existing folder."""

    configs: tuple[FilterConfig, ...]
    batch_size: int
    classes: tuple[StageClassPlan, ...]
    create: tuple[FilterUnit, ...]
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    existing: dict[str, str | None] = field(default_factory=dict)
    superseded: int = 0  # recorded verdicts of images or settings the spec no longer asks for (kept, not read)

    stage = FILTERS_STAGE

    @property
    def total_create(self) -> int:
        return len(self.create)

    @property
    def total_keep(self) -> int:
        return sum(c.keep for c in self.classes)

    @property
    def total_seconds(self) -> float:
        return sum(c.est_seconds for c in self.classes)

    def config(self, kind: str) -> FilterConfig:
        return next(c for c in self.configs if c.kind == kind)

    def describe(self) -> str:
        shown = []
        for c in self.configs:
            what = ", ".join(f"{k} {v}" for k, v in c.params if v is not None)
            if c.model is not None:
                what = f"{shown_source(c.model)}" + (f", {what}" if what else "")
            shown.append(f"{c.kind} ({what})" if what else c.kind)
        return "; ".join(shown) + f"; batch {self.batch_size}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "filters": [c.identity() for c in self.configs],
            "batch_size": self.batch_size,
            "create": self.total_create,
            "keep": self.total_keep,
            "superseded": self.superseded,
            "est_seconds": round(self.total_seconds, 3),
            "classes": [{"filter": c.stage.split(".", 1)[1], **c.to_dict()} for c in self.classes],
        }


def filter_config(loaded: LoadedSpec, entry: FilterSpec) -> FilterConfig:
    kind, config = entry.kind, entry.config
    values = config.model_dump(mode="json")
    if kind == "clip_score":
        model = stage_model_ref(loaded, config.model, config.revision, config.dtype, False)
        # batch_size changes no score (CLIP embeds each image and text on its own)
        params = {k: v for k, v in values.items() if k not in ("model", "revision", "dtype", "batch_size")}
        return FilterConfig(kind, tuple(sorted(params.items())), model=model)
    if kind == "classifier":
        params = {k: v for k, v in values.items() if k != "model"}
        return FilterConfig(kind, tuple(sorted(params.items())), builtin_model=config.model)
    return FilterConfig(kind, tuple(sorted(values.items())))


def _batch_size(loaded: LoadedSpec) -> int:
    sizes = [e.config.batch_size for e in loaded.spec.stages.filters if e.kind == "clip_score"]
    return int(sizes[0] or loaded.spec.budget.max_batch) if sizes else int(loaded.spec.budget.max_batch)


def plan_filters(
    loaded: LoadedSpec,
    images: Sequence[tuple[str, str, Sequence[str], Iterable[bool]]],
    catalog: Catalog,
    device_kind: str,
) -> FiltersPlan | None:
    """The filters' units over ``images``: per class (name, label, the fingerprints of the images
    it owns in unit-index order, whether each is still to be made), in the plan's class order."""
    entries = loaded.spec.stages.filters
    if not entries:
        return None
    configs = tuple(filter_config(loaded, e) for e in entries)
    latest = latest_filter_verdicts(catalog) if catalog.exists() else {}
    create: list[FilterUnit] = []
    rows: list[StageClassPlan] = []
    chains: dict[str, tuple[str, ...]] = {}
    existing: dict[str, str | None] = {}
    for name, _label, fingerprints, to_make in images:
        pending = list(to_make)
        folder = loaded.classes[name].existing_folder if name in loaded.classes else None
        for config in configs:
            config_hash = config.config_hash()
            per_image = _SECONDS[config.kind].get(device_kind, _SECONDS[config.kind]["cpu"])
            if config.kind == "near_duplicate":
                compared: Iterable[str | None] = comparison_chain(existing_listing_hash(folder), fingerprints)
            else:
                compared = (None for _ in fingerprints)
            made_here = keep = after = 0
            for image_fp, with_what, new in zip(fingerprints, compared, pending):
                fp = verdict_fingerprint(config_hash, image_fp, with_what)
                recorded = latest.get((image_fp, config.kind))
                if recorded is not None and recorded[0] == fp:
                    keep += 1
                    continue
                create.append(FilterUnit(fp, config.kind, image_fp, name))
                made_here += 1
                after += int(bool(new))
            if made_here and config.kind == "near_duplicate":
                chains[name] = tuple(fingerprints)
                existing[name] = folder
            rows.append(
                StageClassPlan(
                    f"{FILTERS_STAGE}.{config.kind}", name, made_here, keep, after, made_here * per_image, "table"
                )
            )
    kinds = {c.kind for c in configs}
    n_recorded = sum(1 for (_fp, kind) in latest if kind in kinds)
    superseded = n_recorded - sum(r.keep for r in rows)
    return FiltersPlan(configs, _batch_size(loaded), tuple(rows), tuple(create), chains, existing, superseded)
