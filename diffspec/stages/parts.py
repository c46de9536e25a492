"""A stage table's Parquet parts: one per batch while a run writes, merged into one per run after.

Every stage runner appends a part per batch (each atomic, so a killed run loses at most the batch
in hand) and merges its run's parts at the end; a killed run never merged its own, so the next
run merges them first. Readers see the same rows either way (a crash inside a merge leaves rows
twice, which the stages' readers tolerate: latest wins, or they dedup).
"""

from __future__ import annotations

from diffspec.catalog.store import Catalog


def tidy_stage(catalog: Catalog, current_run: str, table: str) -> None:
    """Merge each earlier run's parts of ``table`` (a killed run never compacted its own)."""
    from diffspec.catalog.recorder import run_of

    counts: dict[str, int] = {}
    for part in catalog.parts(table):
        run = run_of(part)
        if run != current_run and not part.name.endswith("-all.parquet"):
            counts[run] = counts.get(run, 0) + 1
    for run, count in sorted(counts.items()):
        if count > 1:
            compact_stage(catalog, run, table)


def compact_stage(catalog: Catalog, run_id: str, table: str) -> None:
    """Merge the run's parts of the table into one (kill-safe: readers dedup in between)."""
    try:
        catalog.compact(table, run_id)
    except OSError:
        pass  # an optimisation: many small parts read the same
