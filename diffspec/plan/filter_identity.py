"""What identifies a filter's verdict on an image, without torch: the filter's configuration and
the fingerprints built from it.

A filter unit is (filter, image). Its fingerprint covers the filter kind, every parameter of the
spec entry (thresholds included, so a new threshold re-plans that filter's units and no other
filter's), the model a filter loads (source, revision, dtype, a local folder's content, as
:class:`~diffspec.plan.stage_identity.HFModelRef`), the image's fingerprint and, for
``near_duplicate``, the comparison set the verdict depends on (:func:`comparison_chain`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffspec.content import default_cache
from diffspec.plan.stage_identity import IMAGE_BACKEND, HFModelRef
from diffspec.plan.unit import canonical_json

FILTER_CANONICAL = "diffspec-filter/v1"
#: Versions of the measurements diffspec computes itself: bump one when its arithmetic changes,
#: so the verdicts it made are planned again.
MEASURE_VERSION = {"near_duplicate": 1, "blank": 1, "sharpness": 1, "classifier": 1, "clip_score": 1}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """One entry of ``stages.filters`` as the plan identifies it."""

    kind: str
    params: tuple[tuple[str, Any], ...]  # sorted; the spec entry's values without the model keys
    model: HFModelRef | None = None  # filters that load a transformers checkpoint (clip_score)
    builtin_model: str | None = None  # filters that use a model shipped in the package (classifier)

    def param(self, name: str) -> Any:
        return dict(self.params)[name]

    def identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "version": MEASURE_VERSION[self.kind],
            "params": {k: v for k, v in self.params},
        }
        if self.model is not None:
            out["model"] = self.model.identity()
            out["image_backend"] = IMAGE_BACKEND
        if self.builtin_model is not None:
            out["builtin_model"] = self.builtin_model
        return out

    def config_hash(self) -> str:
        return _sha(FILTER_CANONICAL + "/config", self.identity())


def _sha(prefix: str, body: Any) -> str:
    return hashlib.sha256((prefix + "\n" + canonical_json(body)).encode("utf-8")).hexdigest()


def filter_fingerprint(config: FilterConfig, image_fingerprint: str, compared_with: str | None = None) -> str:
    """The verdict of one filter on one image (``compared_with``: near-duplicates' comparison set)."""
    return verdict_fingerprint(config.config_hash(), image_fingerprint, compared_with)


def verdict_fingerprint(config_hash: str, image_fingerprint: str, compared_with: str | None = None) -> str:
    """:func:`filter_fingerprint` from the config's hash, computed once per filter: a plan of a
    million images hashes a few short lines per unit, not the config's canonical JSON."""
    text = f"{FILTER_CANONICAL}\n{config_hash}\n{image_fingerprint}\n{compared_with or '-'}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def existing_images(folder: str | Path | None) -> list[Path]:
    """The image files of a class's ``existing:`` folder, in a stable order."""
    if folder is None:
        return []
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def existing_listing_hash(folder: str | Path | None) -> str:
    """The content of a class's ``existing:`` folder: the sorted sha256 of its image files. Content,
    not names, because the verdict depends on the pixels: renaming a file re-plans nothing,
    replacing one re-plans the class's near-duplicate verdicts."""
    cache = default_cache()
    digests = sorted(cache.file_sha256(p) for p in existing_images(folder))
    return _sha(FILTER_CANONICAL + "/existing", digests)


def comparison_chain(existing_hash: str, image_fingerprints: Sequence[str]) -> Iterator[str]:
    """Per image of a class in unit-index order, a digest of what its near-duplicate verdict is
    compared with: the existing folder's content and every earlier image of the class. An image
    is a duplicate of an earlier kept one, so its verdict depends on exactly these; a later
    image (a top-up, a raised target) changes no earlier verdict."""
    state = hashlib.sha256(f"{FILTER_CANONICAL}/chain\n{existing_hash}".encode())
    for fp in image_fingerprints:
        yield state.hexdigest()
        state.update(fp.encode("ascii"))
