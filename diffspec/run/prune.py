"""Delete images the spec no longer asks for: what the plan lists under ``remove``.

Tombstones first, files after: a crash in between leaves files without live rows (unrecorded
files, overwritten or ignored later), never a live row without its file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffspec.catalog.lock import OutputLock
from diffspec.catalog.store import Catalog, new_run_id
from diffspec.plan.diff import Plan
from diffspec.run.writer import check_inside


@dataclass(frozen=True)
class PruneResult:
    count: int
    bytes: int
    paths: tuple[str, ...]
    dry_run: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"count": self.count, "bytes": self.bytes, "dry_run": self.dry_run, "paths": list(self.paths)}


def _targets(plan: Plan, catalog: Catalog) -> list[tuple[str, str]]:
    """The plan's removals that are still live (the catalog may have moved since the plan)."""
    if not plan.removals:
        return []
    index = catalog.index()
    live = getattr(index, "fingerprint_set", None) or set(index.fingerprints)
    return [(r.fingerprint, r.path) for r in plan.removals if r.fingerprint in live]


def _size(output: Path, rel: str) -> int:
    try:
        return check_inside(output, rel).stat().st_size
    except (OSError, Exception):
        return 0


def prune_locked(plan: Plan, catalog: Catalog, run_id: str, dry_run: bool = False) -> PruneResult:
    """Prune while the caller holds the output lock (apply --prune)."""
    output = Path(plan.output)
    targets = _targets(plan, catalog)
    paths = tuple(p for _, p in targets)
    size = sum(_size(output, p) for p in paths)
    if dry_run or not targets:
        return PruneResult(len(targets), size, paths, dry_run)
    catalog.tombstone(targets, run_id)
    for rel in paths:
        try:
            check_inside(output, rel).unlink(missing_ok=True)
        except OSError:
            pass  # already gone, or not ours to delete: the tombstone is what counts
    return PruneResult(len(targets), size, paths, dry_run)


def prune(plan: Plan, catalog: Catalog, dry_run: bool = False) -> PruneResult:
    """`diffspec gc`: tombstone and delete what the plan removes. Takes the output lock."""
    if dry_run:
        return prune_locked(plan, catalog, "dry-run", dry_run=True)
    run_id = new_run_id()
    with OutputLock(Path(plan.output), run_id, command="gc"):
        return prune_locked(plan, catalog, run_id)
