"""Record a run's images batch by batch, and tidy what killed runs left in the images table.

SQLMesh's ``add_interval`` per evaluated batch: every finished batch is one append-only part,
so a crash loses at most the batches in flight. A run's small parts are merged as it goes and
at its end; a killed run's parts are merged by the next run (:func:`tidy_catalog`).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

from diffspec.atomic import atomic_write
from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog, first_positions


class Recorder:
    """Appends records to the catalog, one part per batch, each fingerprint once per run.

    Every ``compact_every`` parts the run's small parts are merged, so a long run never leaves
    thousands of parts behind even if it is killed before its final compaction."""

    def __init__(self, catalog: Catalog, run_id: str, compact_every: int = 256) -> None:
        self.catalog = catalog
        self.run_id = run_id
        self.seen: set[str] = set()
        self.compact_every = compact_every
        self._parts = 0
        self._lock = threading.Lock()

    def __call__(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """Append the records not yet recorded by this run; returns those."""
        with self._lock:
            fresh = [r for r in records if r.fingerprint not in self.seen]
            if fresh:
                self.catalog.append_images(fresh, self.run_id)
                self.seen.update(r.fingerprint for r in fresh)
                self._parts += 1
                if self._parts % self.compact_every == 0:
                    self.catalog.compact("images", self.run_id)
            return fresh


def merge_run_parts(catalog: Catalog, run_id: str) -> int:
    """Merge every images part of one run into one (each fingerprint once); returns how many
    parts were merged. Kill-safe: the merged part is durable before the old ones go, and a
    merge interrupted half-way is finished by the next one (readers dedup in between)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [p for p in catalog.parts("images") if p.name.startswith(f"part-{run_id}-")]
    if len(parts) < 2:
        return 0
    table = catalog.read_parts(parts, "images")
    fps = table.column("fingerprint").to_pylist()
    if len(set(fps)) != len(fps):
        keep = first_positions(fps)
        table = table.take(pa.array(keep, pa.int64()))
    target = parts[0].parent / f"part-{run_id}-{secrets.token_hex(2)}-all.parquet"
    atomic_write(target, lambda fh: pq.write_table(table, fh, compression="zstd"))
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
