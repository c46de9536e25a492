"""Record a run's images batch by batch, and tidy what killed runs left in the images table.

SQLMesh's ``add_interval`` per evaluated batch, with one difference: rows are appended as one
part per ``flush_seconds`` (2 s) rather than per batch, because a Parquet part costs ~20 ms of
CPU (table, zstd, checksums, fsync) that a CPU run takes from torch, batch after batch. The
first batch is recorded at once. A kill between flushes loses no image: the rows are built only
after their files are durable, and the next apply adopts the whole files that have no row
(``diffspec.run.adopt``), so at most the batches in flight are made again. A run's small parts
are merged as it goes and at its end; a killed run's parts are merged by the next run
(:func:`tidy_catalog`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from diffspec.atomic import atomic_write
from diffspec.catalog.columns import column
from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog, first_positions, write_part_file


class Recorder:
    """Appends records to the catalog, each fingerprint once per run, one part per
    ``flush_seconds`` (0: one part per call). Call :meth:`flush` when the run's batches end.

    Every ``compact_every`` parts the run's small parts are merged, so a long run never leaves
    thousands of parts behind even if it is killed before its final compaction."""

    def __init__(self, catalog: Catalog, run_id: str, compact_every: int = 256, flush_seconds: float = 2.0) -> None:
        self.catalog = catalog
        self.run_id = run_id
        self.seen: set[str] = set()  # recorded or waiting for the next flush
        self.compact_every = compact_every
        self.flush_seconds = flush_seconds
        self._pending: list[ImageRecord] = []
        self._last_flush = float("-inf")  # the first records go out at once
        self._parts = 0
        self._lock = threading.Lock()

    def __call__(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """Take the records not yet taken by this run; returns those. They reach the catalog
        now if ``flush_seconds`` have passed since the last part, else at a later call or flush."""
        with self._lock:
            fresh = [r for r in records if r.fingerprint not in self.seen]
            if fresh:
                self.seen.update(r.fingerprint for r in fresh)
                self._pending.extend(fresh)
                if time.monotonic() - self._last_flush >= self.flush_seconds:
                    self._flush_locked()
            return fresh

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Append what waits; on an error (a full disk) the records stay waiting."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._pending:
            self.catalog.append_images(self._pending, self.run_id)
            self._pending = []
            self._parts += 1
            if self._parts % self.compact_every == 0:
                self.catalog.compact("images", self.run_id)
        self._last_flush = time.monotonic()


def merge_run_parts(catalog: Catalog, run_id: str) -> int:
    """Merge every images part of one run into one (each fingerprint once); returns how many
    parts were merged. Kill-safe: the merged part is durable before the old ones go, and a
    merge interrupted half-way is finished by the next one (readers dedup in between)."""
    import pyarrow as pa

    parts = [p for p in catalog.parts("images") if p.name.startswith(f"part-{run_id}-")]
    if len(parts) < 2:
        return 0
    table = catalog.read_parts(parts, "images")
    fps = table.column("fingerprint").to_pylist()
    if len(set(fps)) != len(fps):
        keep = first_positions(fps)
        table = table.take(column(keep, pa.int64()))
    target = parts[0].parent / f"part-{run_id}-{secrets.token_hex(2)}-all.parquet"
    atomic_write(target, lambda fh: write_part_file(table, fh))  # checksummed like every part
    for part in parts:
        part.unlink(missing_ok=True)
    return len(parts)


def run_of(part: Path) -> str:
    return "-".join(part.name.removeprefix("part-").split("-")[:2])  # run ids are <utc stamp>-<hex>


def tidy_catalog(catalog: Catalog, current_run: str) -> list[str]:
    """Finish what killed runs left in the images table: merge each earlier run's parts into
    one (a killed run never compacted; a kill during a compaction leaves rows twice). Readers
    dedup either way; this keeps the part count small and every fingerprint in one row."""
    runs: dict[str, int] = {}
    for part in catalog.parts("images"):
        run = run_of(part)
        if run != current_run:
            runs[run] = runs.get(run, 0) + 1
    notes = []
    for run, count in sorted(runs.items()):
        if count > 1:
            merged = merge_run_parts(catalog, run)
            notes.append(f"merged {merged} catalog parts of earlier run {run}")
    return notes
