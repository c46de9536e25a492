"""`diffspec status`: per class, how far the dataset is from its spec.

target, done (live images the plan keeps), remaining (the plan's create count), obsolete
(images the plan removes), rejected (rows of the ``filters`` stage with ``passed = false``)
and quality (mean ``score`` of the ``classifier`` stage). Stage figures are 0 / None when the
stage has not run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from diffspec.catalog.store import Catalog
from diffspec.plan.diff import Plan
from diffspec.spec.loader import LoadedSpec


@dataclass(frozen=True)
class ClassStatus:
    name: str
    target: int
    done: int
    remaining: int
    obsolete: int
    rejected: int = 0
    quality: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("name")
        return {k: d[k] for k in ("class", "target", "done", "remaining", "obsolete", "rejected", "quality")}


def _stage_by_class(catalog: Catalog, stage: str, column: str, live_class: dict[str, str]) -> dict[str, list[Any]]:
    """The latest value of ``column`` per live fingerprint of a stage table, grouped by class."""
    if stage not in catalog.stages():
        return {}
    table = catalog.read_table(stage)
    if column not in table.column_names or "fingerprint" not in table.column_names:
        return {}
    latest: dict[str, Any] = {}
    for fp, value in zip(table.column("fingerprint").to_pylist(), table.column(column).to_pylist()):
        latest[fp] = value  # parts are read in name (time) order: the last one wins
    out: dict[str, list[Any]] = defaultdict(list)
    for fp, value in latest.items():
        cls = live_class.get(fp)
        if cls is not None:
            out[cls].append(value)
    return out


def class_status(loaded: LoadedSpec, plan: Plan, catalog: Catalog) -> list[ClassStatus]:
    live_class: dict[str, str] = {}
    if catalog.exists():
        index = catalog.index()
        names = index.class_names
        live_class = dict(zip(index.fingerprints, names.to_pylist() if hasattr(names, "to_pylist") else list(names)))
    passed = _stage_by_class(catalog, "filters", "passed", live_class) if live_class else {}
    scores = _stage_by_class(catalog, "classifier", "score", live_class) if live_class else {}
    rows = []
    for c in plan.classes:
        values = [float(s) for s in scores.get(c.name, []) if s is not None]
        rows.append(ClassStatus(
            name=c.name,
            target=c.target,
            done=c.keep,
            remaining=c.create,
            obsolete=c.remove,
            rejected=sum(1 for p in passed.get(c.name, []) if p is False),
            quality=sum(values) / len(values) if values else None,
        ))
    return rows


def render_status(rows: list[ClassStatus], console: Any) -> None:
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for col in ("class", "target", "done", "remaining", "obsolete", "rejected", "quality"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in rows:
        table.add_row(
            r.name, str(r.target),
            f"[green]{r.done}[/]" if r.done and not r.remaining else str(r.done),
            f"[yellow]{r.remaining}[/]" if r.remaining else "0",
            f"[red]{r.obsolete}[/]" if r.obsolete else "0",
            str(r.rejected),
            f"{r.quality:.3f}" if r.quality is not None else "-",
        )
    if len(rows) > 1:
        table.add_row("[bold]total", *(f"[bold]{sum(getattr(r, f) for r in rows)}" for f in ("target", "done", "remaining", "obsolete", "rejected")), "")
    console.print(table)
