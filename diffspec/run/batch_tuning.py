"""Choose the batch size from measured throughput, when the spec asks (``budget.tune_batch``).

The plan's batch size is the largest the memory budget allows, at most ``max_batch``. That is
not always the fastest: past the point where the device is busy, a bigger batch adds memory
traffic and nothing else (a CPU often peaks well below the memory limit). With tuning on, a
worker measures one pipeline call at each candidate size (the planned size, then a half and a
quarter of it) after a warm-up call, keeps the size with the least seconds per image for the
rest of the run, and says so in the run's log (event ``batch_tuned``). Candidates never exceed
the planned size, so tuning stays inside the memory budget.

The cost of the choice: an image's bytes depend on its batch size within float rounding
(docs/determinism.md), and a measured choice can differ between runs. So tuning is opt-in;
without it every batch runs at the planned size and a plan gives the same bytes every time.
Every image records the batch size it was made at (the catalog's ``batch_size`` column).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatchTuner:
    planned: int
    candidates: tuple[int, ...] = ()
    seconds_per_image: dict[int, float] = field(default_factory=dict)
    chosen: int | None = None
    _warmed: bool = False

    def __post_init__(self) -> None:
        if not self.candidates:
            sizes = [self.planned, self.planned // 2, self.planned // 4]
            self.candidates = tuple(dict.fromkeys(s for s in sizes if s >= 1))
        if len(self.candidates) == 1:
            self.chosen = self.candidates[0]

    @property
    def done(self) -> bool:
        return self.chosen is not None

    def next_size(self) -> int:
        """The size of the next call: the planned one to warm up, then each candidate once."""
        if self.chosen is not None:
            return self.chosen
        if not self._warmed:
            return self.planned
        return next(c for c in self.candidates if c not in self.seconds_per_image)

    def observe(self, size: int, seconds: float) -> bool:
        """Take one call's time; returns True when this call completed the choice."""
        if self.chosen is not None:
            return False
        if not self._warmed:
            self._warmed = True  # first call: lazy initialisation, allocator growth, autotuning
            return False
        if size in self.candidates and size not in self.seconds_per_image:
            self.seconds_per_image[size] = seconds / max(1, size)
        if all(c in self.seconds_per_image for c in self.candidates):
            self.chosen = min(self.candidates, key=lambda c: (self.seconds_per_image[c], -c))
            return True
        return False

    def cap(self, limit: int) -> None:
        """An out-of-memory error lowered the size: candidates above it are gone."""
        kept = tuple(c for c in self.candidates if c <= limit) or (limit,)
        self.candidates = kept
        self.planned = min(self.planned, limit)
        for size in list(self.seconds_per_image):
            if size > limit:
                del self.seconds_per_image[size]
        if self.chosen is not None and self.chosen > limit:
            self.chosen = limit
        elif self.chosen is None and all(c in self.seconds_per_image for c in self.candidates):
            self.chosen = min(self.candidates, key=lambda c: (self.seconds_per_image[c], -c))

    def describe(self) -> str:
        trials = ", ".join(f"{s}: {1 / t:.1f} img/s" for s, t in sorted(self.seconds_per_image.items()) if t > 0)
        return f"batch size {self.chosen} of {', '.join(map(str, self.candidates))} ({trials})"
