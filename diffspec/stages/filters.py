"""Run the filters stage's planned units: a measured value and a verdict per (image, filter).

`apply` calls :func:`run_filters` after the images and the segment stage
(``diffspec.run.stage_phase``) with the plan's :class:`~diffspec.plan.filter_stage.FiltersPlan`.
Filters run in spec order, their units in the plan's order, ``batch_size`` at a time. Each batch
appends one atomic Parquet part to the filter's own table (its measured values: ``clip_score``,
``near_duplicate``, ``blank``, ``classifier``, ``sharpness``) and then one to ``filters``
(:data:`FILTERS_SCHEMA`, the verdicts :mod:`diffspec.catalog.verdicts` reads). A unit is done
when its verdict is recorded, so a killed run loses at most the batch in hand and the next apply
makes exactly the missing verdicts. A filter never deletes an image: rejected images stay in
the catalog, marked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from diffspec.catalog.columns import column, table_from_rows
from diffspec.catalog.store import Catalog, utcnow
from diffspec.catalog.verdicts import FILTERS_SCHEMA, FILTERS_TABLE, latest_filter_verdicts
from diffspec.errors import StageError
from diffspec.plan.filter_identity import FilterConfig, existing_images
from diffspec.plan.filter_stage import FILTERS_STAGE, FiltersPlan, FilterUnit
from diffspec.run.events import RunEvent, event
from diffspec.run.stage_phase import StageContext, StageOutcome
from diffspec.stages.parts import compact_stage, tidy_stage

__all__ = ["FILTERS_SCHEMA", "FILTERS_TABLE", "perceptual_hash", "run_filters"]


@dataclass(frozen=True)
class ImageRef:
    unit: FilterUnit
    class_name: str
    prompt: str
    path: Path


@dataclass(frozen=True)
class Measured:
    """A batch's verdicts and values, and the rows of the filter's own table."""

    passed: list[bool]
    values: list[float | None]
    columns: dict[str, pa.Array]


def _load(paths: Sequence[Path]) -> list[Any]:
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return images


def _within(value: float, config: FilterConfig) -> bool:
    low, high = config.param("min"), config.param("max")
    return (low is None or value >= low) and (high is None or value <= high)


# --------------------------------------------------------------------------- the measurements


def _classifier(refs: Sequence[ImageRef], config: FilterConfig, _models: dict[str, Any]) -> Measured:
    """Does the image show the class its prompt names? For builtin:digits, a scikit-learn
    classifier trained on the real digits answers; the score is its probability of the prompted digit."""
    if config.builtin_model != "builtin:digits-classifier":
        raise StageError(
            f"classifier model {config.builtin_model!r} is not available; the built-in one is 'builtin:digits-classifier'"
        )
    from diffspec.generate.builtin.digit_classifier import classifier, to_digit_features
    from diffspec.generate.builtin.digits import parse_prompt

    expected = [parse_prompt(ref.prompt).digit for ref in refs]
    model = classifier()
    probs = model.predict_proba(to_digit_features(_load([r.path for r in refs])))
    class_index = {int(c): i for i, c in enumerate(model.classes_)}
    predicted = [int(model.classes_[p.argmax()]) for p in probs]
    scores = [float(p[class_index[e]]) if e is not None else 0.0 for p, e in zip(probs, expected)]
    minimum = config.param("min_confidence")
    recognised = [e is not None and pr == e for e, pr in zip(expected, predicted)]
    passed = [ok and s >= minimum for ok, s in zip(recognised, scores)]
    return Measured(
        passed,
        list(scores),
        {
            "expected": column(expected, pa.int32()),
            "predicted": column(predicted, pa.int32()),
            "score": column(scores, pa.float64()),
            "recognised": column(recognised, pa.bool_()),
        },
    )


def _sharpness(refs: Sequence[ImageRef], config: FilterConfig, _models: dict[str, Any]) -> Measured:
    """Variance of the Laplacian of the gray image: low means blurry."""
    import numpy as np

    values = []
    for im in _load([r.path for r in refs]):
        g = np.asarray(im.convert("L"), dtype=np.float64)
        lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
        values.append(float(lap.var()) if lap.size else 0.0)
    return Measured([_within(v, config) for v in values], list(values), {"sharpness": column(values, pa.float64())})


def _blank(refs: Sequence[ImageRef], config: FilterConfig, _models: dict[str, Any]) -> Measured:
    """Flat images: the standard deviation of the gray levels (0-255), and for the page the
    share of the most common gray level."""
    import numpy as np

    stds, shares = [], []
    for im in _load([r.path for r in refs]):
        g = np.asarray(im.convert("L"), dtype=np.uint8)
        stds.append(float(g.std()))
        shares.append(float(np.bincount(g.ravel(), minlength=256).max() / max(1, g.size)))
    passed = [s > config.param("max_std") for s in stds]
    return Measured(
        passed,
        list(stds),
        {"gray_std": column(stds, pa.float64()), "dominant_share": column(shares, pa.float64())},
    )


def _clip(refs: Sequence[ImageRef], config: FilterConfig, models: dict[str, Any]) -> Measured:
    scorer = models["clip_score"]
    scores = scorer.score(_load([r.path for r in refs]), [r.prompt for r in refs])
    return Measured(
        [_within(s, config) for s in scores],
        list(scores),
        {"clip_score": column(scores, pa.float64()), "model": column([scorer.source] * len(refs), pa.string())},
    )


MEASURES: dict[str, Callable[[Sequence[ImageRef], FilterConfig, dict[str, Any]], Measured]] = {
    "classifier": _classifier,
    "sharpness": _sharpness,
    "blank": _blank,
    "clip_score": _clip,
}


# --------------------------------------------------------------------------- near-duplicates


def perceptual_hash(image: Any, kind: str) -> int:
    """A 64-bit perceptual hash by imagehash (``phash``: DCT of a 32 px gray image; ``dhash``:
    gradients of a 9x8 one), as an integer so Hamming distances are a popcount."""
    import imagehash

    h = imagehash.phash(image) if kind == "phash" else imagehash.dhash(image)
    return int(str(h), 16)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _recorded_hashes(catalog: Catalog, kind: str) -> dict[str, int]:
    if not catalog.parts("near_duplicate"):
        return {}
    table = catalog.read_table("near_duplicate")
    if not {"fingerprint", "hash_kind", "hash"} <= set(table.column_names):
        return {}
    out = {}
    for fp, k, h in zip(*(table.column(c).to_pylist() for c in ("fingerprint", "hash_kind", "hash"))):
        if k == kind and h is not None:
            out[str(fp)] = int(h) & ((1 << 64) - 1)
    return out


@dataclass(frozen=True)
class DuplicateVerdict:
    hash: int
    nearest: int | None  # Hamming distance to the nearest compared image (None: nothing to compare)
    nearest_to: str | None  # its image fingerprint, or "existing:<file>" for the existing folder
    kept: bool


def duplicate_verdicts(
    chain: Sequence[tuple[str, int]], existing: Sequence[tuple[str, int]], max_hamming: int
) -> dict[str, DuplicateVerdict]:
    """Replay a class in unit-index order: an image within ``max_hamming`` bits of an existing
    image or of an earlier kept image is a duplicate; a kept image joins the comparison set."""
    pool: list[tuple[str, int]] = list(existing)
    out: dict[str, DuplicateVerdict] = {}
    for fp, h in chain:
        nearest, to = None, None
        for name, other in pool:
            d = (h ^ other).bit_count()
            if nearest is None or d < nearest:
                nearest, to = d, name
        kept = nearest is None or nearest > max_hamming
        if kept:
            pool.append((fp, h))
        out.setdefault(fp, DuplicateVerdict(h, nearest, to, kept))
    return out


# --------------------------------------------------------------------------- the runner


class _Run:
    def __init__(self, stage: FiltersPlan, context: StageContext) -> None:
        self.stage = stage
        self.context = context
        self.catalog = context.catalog
        live = self.catalog.live_images(["fingerprint", "class_name", "prompt", "path"])
        self.images = {
            r["fingerprint"]: (r["class_name"], r["prompt"], self.catalog.output / r["path"]) for r in live.to_pylist()
        }
        self.models: dict[str, Any] = {}
        self.events: list[RunEvent] = []
        self.made = self.failed = self.waiting = 0
        self.interrupted = False
        self.counts: dict[str, tuple[int, int]] = {}

    def ref(self, unit: FilterUnit) -> ImageRef:
        _cls, prompt, path = self.images[unit.image_fingerprint]
        return ImageRef(unit, unit.class_name, prompt or "", path)

    def record(self, config: FilterConfig, refs: Sequence[ImageRef], measured: Measured) -> None:
        now = utcnow()
        run_id = self.context.run_id
        n = len(refs)
        values = pa.table(
            {
                "fingerprint": column([r.unit.image_fingerprint for r in refs], pa.string()),
                "filter_fingerprint": column([r.unit.fingerprint for r in refs], pa.string()),
                "class_name": column([r.class_name for r in refs], pa.string()),
                **measured.columns,
                "passed": column(measured.passed, pa.bool_()),
                "run_id": column([run_id] * n, pa.string()),
                "created_at": column([now] * n, pa.timestamp("us", tz="UTC")),
            }
        )
        # Values first, then verdicts: the verdict makes the unit done, so a run killed between
        # the two measures the batch again (its values twice; readers take the latest).
        self.catalog.append_stage(config.kind, values, run_id)
        verdicts = table_from_rows(
            [
                {
                    "fingerprint": r.unit.image_fingerprint,
                    "class_name": r.class_name,
                    "filter": config.kind,
                    "config_hash": r.unit.fingerprint,
                    "passed": ok,
                    "value": v,
                    "run_id": run_id,
                    "created_at": now,
                }
                for r, ok, v in zip(refs, measured.passed, measured.values)
            ],
            FILTERS_SCHEMA,
        )
        self.catalog.append_stage(FILTERS_TABLE, verdicts, run_id)
        self.made += n
        checked, rejected = self.counts.get(config.kind, (0, 0))
        self.counts[config.kind] = (checked + n, rejected + sum(not ok for ok in measured.passed))

    def batches(self, config: FilterConfig, refs: Sequence[ImageRef], measure: Callable[..., Measured]) -> None:
        size = self.stage.batch_size
        for start in range(0, len(refs), size):
            if self.context.stop.is_set():
                self.interrupted = True
                return
            batch = refs[start : start + size]
            try:
                measured = measure(batch)
            except (OSError, ValueError, RuntimeError) as exc:
                # One unreadable image fails its batch alone; the next apply tries it again.
                self.failed += len(batch)
                self.events.append(
                    event(
                        "stage_batch_failed",
                        f"filter {config.kind}: a batch of {len(batch)} failed: {type(exc).__name__}: {exc}",
                    )
                )
                continue
            self.record(config, batch, measured)

    def run(self) -> None:
        done = latest_filter_verdicts(self.catalog)
        for config in self.stage.configs:
            units = [
                u
                for u in self.stage.create
                if u.kind == config.kind and done.get((u.image_fingerprint, u.kind), ("",))[0] != u.fingerprint
            ]
            if not units or self.interrupted:
                continue
            if config.kind == "near_duplicate":
                self.near_duplicates(config, units)
                continue
            ready = [u for u in units if u.image_fingerprint in self.images]
            self.waiting += len(units) - len(ready)
            if not ready:
                continue
            if config.kind == "clip_score" and "clip_score" not in self.models:
                from diffspec.stages.clip import ClipScorer

                assert config.model is not None
                self.context.note(f"filter clip_score: loading {config.model.source}")
                self.models["clip_score"] = ClipScorer.load(config.model, self.context.device)
            measure = MEASURES[config.kind]
            self.batches(config, [self.ref(u) for u in ready], lambda b, c=config, m=measure: m(b, c, self.models))

    def near_duplicates(self, config: FilterConfig, units: Sequence[FilterUnit]) -> None:
        """Per class, hash the class's images (recorded hashes are reused), replay the class in
        unit-index order, and record the verdicts of the units to make. A unit waits while an
        image before it in its class is not made (its verdict depends on that image)."""
        kind, max_hamming = config.param("hash"), int(config.param("max_hamming"))
        recorded = _recorded_hashes(self.catalog, kind)
        by_class: dict[str, list[FilterUnit]] = {}
        for u in units:
            by_class.setdefault(u.class_name, []).append(u)
        for name, todo in by_class.items():
            chain = self.stage.chains.get(name, ())
            made_prefix = 0
            while made_prefix < len(chain) and chain[made_prefix] in self.images:
                made_prefix += 1
            available = set(chain[:made_prefix])
            ready = [u for u in todo if u.image_fingerprint in available]
            self.waiting += len(todo) - len(ready)
            if not ready:
                continue
            try:
                hashes = []
                for fp in chain[:made_prefix]:
                    if fp not in recorded:
                        recorded[fp] = perceptual_hash(_load([self.images[fp][2]])[0], kind)
                    hashes.append((fp, recorded[fp]))
                folder = self.stage.existing.get(name)
                existing = [
                    (f"existing:{p.relative_to(folder).as_posix()}", perceptual_hash(_load([p])[0], kind))
                    for p in existing_images(folder)
                ]
            except OSError as exc:
                self.failed += len(ready)
                self.events.append(
                    event("stage_batch_failed", f"filter near_duplicate: class {name}: {type(exc).__name__}: {exc}")
                )
                continue
            verdicts = duplicate_verdicts(hashes, existing, max_hamming)

            def measure(batch: Sequence[ImageRef], v: dict[str, DuplicateVerdict] = verdicts) -> Measured:
                got = [v[r.unit.image_fingerprint] for r in batch]
                return Measured(
                    [g.kept for g in got],
                    [float(g.nearest) if g.nearest is not None else None for g in got],
                    {
                        "hash_kind": column([kind] * len(got), pa.string()),
                        "hash": column([_signed(g.hash) for g in got], pa.int64()),
                        # float64, as 0.1 wrote it: a catalog holds both and they must concatenate
                        "nearest_hamming": column([g.nearest for g in got], pa.float64()),
                        "nearest_to": column([g.nearest_to for g in got], pa.string()),
                        "kept": column([g.kept for g in got], pa.bool_()),
                    },
                )

            self.batches(config, [self.ref(u) for u in ready], measure)


def run_filters(stage: FiltersPlan, context: StageContext) -> StageOutcome:
    """Make ``stage.create``: every planned verdict whose image is in the catalog."""
    t0 = time.perf_counter()
    tables = sorted({c.kind for c in stage.configs} | {FILTERS_TABLE})
    for table in tables:
        tidy_stage(context.catalog, context.run_id, table)
    run = _Run(stage, context)
    run.run()
    if run.waiting:
        run.events.append(
            event(
                "stage_waiting",
                f"filters: {run.waiting} verdicts wait for images that are not in the catalog (failed or not made yet)",
                count=run.waiting,
            )
        )
    for table in tables:
        compact_stage(context.catalog, context.run_id, table)
    return StageOutcome(
        FILTERS_STAGE,
        run.made,
        run.failed,
        run.waiting,
        time.perf_counter() - t0,
        interrupted=run.interrupted,
        events=tuple(run.events),
        filters=tuple((c.kind, *run.counts[c.kind]) for c in stage.configs if c.kind in run.counts),
    )
