"""Run the spec's post-generation stages over the catalog's images that lack their output."""

from __future__ import annotations

from dataclasses import dataclass

from diffspec.catalog.store import Catalog, new_run_id
from diffspec.spec.loader import LoadedSpec
from diffspec.stages.filters import FilterOutcome, run_filters


@dataclass(frozen=True)
class StagesResult:
    filters: tuple[FilterOutcome, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "filters": [
                {"filter": f.name, "checked": f.checked, "rejected": f.rejected, "skipped": f.skipped_reason}
                for f in self.filters
            ],
            "notes": list(self.notes),
        }


def run_stages(loaded: LoadedSpec, catalog: Catalog | None = None, run_id: str | None = None) -> StagesResult:
    catalog = catalog or Catalog(loaded.output)
    run_id = run_id or new_run_id()
    stages = loaded.spec.stages
    notes = []
    # The segment stage is planned and runs inside apply (diffspec.stages.segment_stage); the
    # captions stage is refused at validation until it is wired (diffspec.spec.availability).
    outcomes = run_filters(stages.filters, catalog, run_id)
    notes.extend(f"{o.name}: {o.skipped_reason}" for o in outcomes if o.skipped_reason)
    return StagesResult(tuple(outcomes), tuple(notes))
