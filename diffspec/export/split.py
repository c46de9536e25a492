"""The train / validation / test split of an export, decided per image from its fingerprint.

An image's place is a pure function of its fingerprint and the fractions asked for: a number
``u`` in [0, 1) from sha256 of the fingerprint (salted, so the split does not line up with
anything else derived from the fingerprint) puts it in ``val`` when ``u < val``, in ``test``
when ``u >= 1 - test``, and in ``train`` otherwise. So:

- an image never changes split when images are added, rejected or removed (no other image
  takes part in its decision);
- raising ``val`` (or ``test``) only moves images out of ``train`` into it, and lowering it
  only moves them back: the two held-out windows sit at the two ends of [0, 1) and never
  overlap while ``val + test < 1``.

Fractions are expected shares, not exact counts: 100 images at ``val=0.1`` give about 10.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from diffspec.errors import ExportError

TRAIN, VAL, TEST = "train", "val", "test"
_SALT = b"diffspec-split/1:"
_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Split:
    """Fractions of the images held out for validation and test (the rest is train)."""

    val: float = 0.0
    test: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (("val", self.val), ("test", self.test)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ExportError(f"split {name} must be a fraction between 0 and 1, got {value!r}")
            if not 0.0 <= value < 1.0:
                raise ExportError(f"split {name} must be a fraction in [0, 1), got {value}")
        if self.val + self.test >= 1.0:
            raise ExportError(
                f"split val + test must leave images for train: got val {self.val} + test {self.test} >= 1"
            )
        if self.val == 0.0 and self.test == 0.0:
            raise ExportError("a split needs val or test above 0 (e.g. --val 0.1); leave it out for train only")

    @property
    def names(self) -> tuple[str, ...]:
        """The splits this one makes, train first."""
        return (TRAIN,) + ((VAL,) if self.val else ()) + ((TEST,) if self.test else ())

    def of(self, fingerprint: str) -> str:
        u = unit_interval(fingerprint)
        if u < self.val:
            return VAL
        if u >= 1.0 - self.test:
            return TEST
        return TRAIN


def unit_interval(fingerprint: str) -> float:
    """The fingerprint's place in [0, 1): the first 64 bits of a salted sha256."""
    digest = hashlib.sha256(_SALT + fingerprint.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def as_split(value: Split | float | None) -> Split | None:
    """``Project.export(split=...)`` takes a :class:`Split`, a validation fraction, or None."""
    if value is None or isinstance(value, Split):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Split(val=float(value))
    raise ExportError(f"split must be a Split(val=..., test=...) or a validation fraction, got {value!r}")
