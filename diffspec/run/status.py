"""`diffspec status`: per class, how far the dataset is from its spec.

target, done (live images the plan keeps), remaining (the plan's create count), obsolete
(images the plan removes), rejected (rows of the ``filters`` stage with ``passed = false``)
and quality (the share of images the ``classifier`` stage recognised as the prompted class). Stage figures are 0 / None when the
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


def _latest(catalog: Catalog, stage: str, keys: tuple[str, ...], column: str) -> dict[tuple[Any, ...], Any]:
    """The latest value of ``column`` per ``keys`` in a stage table (parts are read in time order)."""
    if stage not in catalog.stages():
        return {}
    table = catalog.read_table(stage)
    if column not in table.column_names or any(k not in table.column_names for k in keys):
        return {}
    cols = [table.column(k).to_pylist() for k in keys]
    return dict(zip(zip(*cols), table.column(column).to_pylist()))


def class_status(loaded: LoadedSpec, plan: Plan, catalog: Catalog) -> list[ClassStatus]:
    live_class: dict[str, str] = {}
    if catalog.exists():
        index = catalog.index()
        live_class = dict(zip(index.fingerprints, index.class_names.to_pylist()))
    # Rejected: live images that any filter's latest verdict failed.
    rejected: dict[str, set[str]] = defaultdict(set)
    for (fp, _filter), passed in _latest(catalog, "filters", ("fingerprint", "filter"), "passed").items():
        if passed is False and fp in live_class:
            rejected[live_class[fp]].add(fp)
    # Quality: the share of scored images the classifier recognised as the prompted class.
    recognised: dict[str, list[bool]] = defaultdict(list)
    for (fp,), value in _latest(catalog, "classifier", ("fingerprint",), "recognised").items():
        if value is not None and fp in live_class:
            recognised[live_class[fp]].append(bool(value))
    rows = []
    for c in plan.classes:
        values = recognised.get(c.name, [])
        rows.append(ClassStatus(
            name=c.name,
            target=c.target,
            done=c.keep,
            remaining=c.create,
            obsolete=c.remove,
            rejected=len(rejected.get(c.name, ())),
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
            f"{r.quality:.0%}" if r.quality is not None else "-",
        )
    if len(rows) > 1:
        table.add_row("[bold]total", *(f"[bold]{sum(getattr(r, f) for r in rows)}" for f in ("target", "done", "remaining", "obsolete", "rejected")), "")
    console.print(table)
