"""What the review server reads from the catalog, by fingerprint only.

The page never sends a path: it names images by fingerprint, and the file served is the one the
catalog row of that fingerprint points at, resolved and confined under the output root. The
images, scores and masks are read once per change of their parts (parts are immutable, so the
part listing is a cache key); the verdicts are read on every request, because decisions change
them and :func:`diffspec.catalog.verdicts.verdicts` is the one place that says what they are.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import UNREVIEWED, Verdict, verdicts
from diffspec.errors import ReviewError
from diffspec.spec.loader import LoadedSpec
from diffspec.stages.gallery import ImageFacts, Mask, image_facts, kept_masks, overlay, png_bytes

ListFilter = Literal["all", "filtered", "unreviewed", "accepted", "rejected"]
LIST_FILTERS: tuple[ListFilter, ...] = ("all", "filtered", "unreviewed", "accepted", "rejected")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


@dataclass(frozen=True, slots=True)
class ClassCounts:
    name: str
    target: int | None
    total: int
    accepted: int
    rejected: int
    unreviewed: int  # as status counts it: no decision and no failed filter
    filtered: int  # a filter's latest verdict failed (whatever a person decided since)
    decided: int  # a person's decision stands

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "total": self.total,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "unreviewed": self.unreviewed,
            "filtered": self.filtered,
            "decided": self.decided,
        }


def matches(verdict: Verdict, wanted: ListFilter) -> bool:
    """``filtered``: a filter rejected it; ``unreviewed``: no person has decided (whatever the
    filters said, so the filter's rejections can be checked); ``accepted`` / ``rejected``: its state."""
    if wanted == "all":
        return True
    if wanted == "filtered":
        return bool(verdict.failed_filters)
    if wanted == "unreviewed":
        return verdict.by != "review"
    return verdict.state == wanted


class ReviewData:
    def __init__(self, loaded: LoadedSpec, catalog: Catalog) -> None:
        self.loaded = loaded
        self.catalog = catalog
        self.root = catalog.output.resolve()
        self._lock = threading.Lock()
        self._key: tuple[str, ...] | None = None
        self._facts: dict[str, ImageFacts] = {}
        self._order: list[str] = []
        self._masks: dict[str, list[Mask]] = {}

    def _parts_key(self) -> tuple[str, ...]:
        tables = ("images", "removed", "filters", "segment")
        return tuple(f"{t}/{p.name}" for t in tables for p in self.catalog.parts(t))

    def _load(self) -> None:
        key = self._parts_key()
        with self._lock:
            if key == self._key:
                return
            facts = image_facts(self.catalog)
            self._facts = {f.fingerprint: f for f in facts}
            self._order = [f.fingerprint for f in facts]
            self._masks = kept_masks(self.catalog)
            self._key = key

    def classes(self) -> list[ClassCounts]:
        """The spec's classes in spec order (then any other class the catalog holds), with counts."""
        self._load()
        states = verdicts(self.catalog)
        counts: dict[str, Counter[str]] = {}
        for fp in self._order:
            fact = self._facts[fp]
            verdict = states.get(fp, UNREVIEWED)
            c = counts.setdefault(fact.class_name, Counter())
            c["total"] += 1
            c[verdict.state] += 1
            c["filtered"] += bool(verdict.failed_filters)
            c["decided"] += verdict.by == "review"
        names = list(self.loaded.classes) + sorted(set(counts) - set(self.loaded.classes))
        return [
            ClassCounts(
                name=n,
                target=self.loaded.classes[n].target if n in self.loaded.classes else None,
                total=counts.get(n, Counter())["total"],
                accepted=counts.get(n, Counter())["accepted"],
                rejected=counts.get(n, Counter())["rejected"],
                unreviewed=counts.get(n, Counter())["unreviewed"],
                filtered=counts.get(n, Counter())["filtered"],
                decided=counts.get(n, Counter())["decided"],
            )
            for n in names
        ]

    def class_counts(self, name: str) -> ClassCounts:
        for c in self.classes():
            if c.name == name:
                return c
        raise ReviewError(f"no class {name!r} in the spec or the catalog")

    def images(self, class_name: str, wanted: str) -> list[dict[str, Any]]:
        if wanted not in LIST_FILTERS:
            raise ReviewError(f"unknown filter {wanted!r}; use one of {', '.join(LIST_FILTERS)}")
        self._load()
        states = verdicts(self.catalog)
        out = []
        for fp in self._order:
            fact = self._facts[fp]
            if fact.class_name != class_name:
                continue
            verdict = states.get(fp, UNREVIEWED)
            if matches(verdict, wanted):
                out.append({"fingerprint": fp, "state": verdict.state, "by": verdict.by})
        return out

    def fact(self, fingerprint: str) -> ImageFacts | None:
        self._load()
        return self._facts.get(fingerprint)

    def details(self, fingerprint: str, history: Sequence[str]) -> dict[str, Any] | None:
        fact = self.fact(fingerprint)
        if fact is None:
            return None
        verdict = verdicts(self.catalog).get(fingerprint, UNREVIEWED)
        masks = self._masks.get(fingerprint, [])
        return {
            **fact.to_dict(),
            "state": verdict.state,
            "by": verdict.by,
            "failed_filters": list(verdict.failed_filters),
            "history": list(history),
            "masks": [{"label": m.label, "score": m.score, "box_xyxy": m.box_xyxy} for m in masks],
        }

    def image_file(self, fingerprint: str) -> tuple[Path, str] | None:
        """The image's file and content type, only if it lies under the output root."""
        fact = self.fact(fingerprint)
        if fact is None:
            return None
        path = (self.root / fact.path).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path, IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")

    def masks_png(self, fingerprint: str) -> bytes | None:
        fact = self.fact(fingerprint)
        masks = self._masks.get(fingerprint) if fact is not None else None
        if fact is None or not masks:
            return None
        width = int(fact.row.get("width") or masks[0].width)
        height = int(fact.row.get("height") or masks[0].height)
        return png_bytes(overlay(masks, width, height))
