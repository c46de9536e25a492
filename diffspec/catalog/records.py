"""Typed rows of the catalog's tables: one record type per table, converted to Arrow columnar.

`apply` builds :class:`ImageRecord`s in one place (``diffspec.run.writer.image_record``) for
freshly written images, adopted ones and test fixtures alike; :class:`RunRecord` is a run's
start or end. The field order is the table's column order (``diffspec.catalog.schema``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import pyarrow as pa

from diffspec.catalog.columns import table as columns_table
from diffspec.catalog.schema import IMAGES, RUNS


@dataclass(frozen=True, slots=True)
class ImageRecord:
    fingerprint: str
    class_name: str
    path: str
    dataset: str | None = None
    classes: tuple[str, ...] = ()
    label: str | None = None
    unit_index: int | None = None
    seed: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    model_name: str | None = None
    model_source: str | None = None
    model_revision: str | None = None
    family: str | None = None
    dtype: str | None = None
    mode: str | None = None
    scheduler: str | None = None
    scheduler_config: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    input_image: str | None = None
    input_hash: str | None = None
    mask_hash: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    run_id: str | None = None
    created_at: datetime | None = None
    seconds: float | None = None  # None: unknown (an adopted image whose run died before saying)
    batch_size: int | None = None
    device: str | None = None
    canonical: str | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    phase: str  # started | finished | interrupted | failed
    dataset: str
    spec_path: str
    spec_hash: str
    profile: str | None
    started_at: datetime
    ended_at: datetime | None
    executor: str
    devices: str  # JSON list
    workers: int
    versions: str  # JSON object: package versions
    planned: int
    made: int
    skipped: int
    failed: int
    host: str
    pid: int
    log: str  # JSON list of the run's events
    speed: str = "{}"  # JSON object: each model's speed options (models.<m>.speed) that the run used


_IMAGE_FIELDS = tuple(f.name for f in fields(ImageRecord))
_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))


def _table(records: Sequence[Any], names: tuple[str, ...], schema: pa.Schema) -> pa.Table:
    return columns_table({name: [getattr(r, name) for r in records] for name in names}, schema)


def images_table(records: Sequence[ImageRecord]) -> pa.Table:
    return _table(records, _IMAGE_FIELDS, IMAGES)


def runs_table(records: Sequence[RunRecord]) -> pa.Table:
    return _table(records, _RUN_FIELDS, RUNS)
