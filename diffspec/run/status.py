"""`diffspec status`: per class, how far the dataset is from its spec, and what the last run did.

Per class: target, done (live images the plan keeps), remaining (the plan's create count),
obsolete (images the plan removes), accepted / rejected / unreviewed (a person's review
decision, else a failed filter: :mod:`diffspec.catalog.verdicts`; counted over the class's live
images, obsolete ones included), short (the target minus the class's made images that are
not rejected: with ``replace_rejected`` the plan's remaining units make up for them), quality (the share of images the ``classifier`` stage recognised as the
prompted class) and the median seconds per image the catalog recorded. Stage figures are
0 / None when the stage has not run. The last run: when, how it ended, what it made, what it
found already there (kept), adopted and failed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import verdicts
from diffspec.plan.diff import Plan
from diffspec.spec.loader import LoadedSpec

# The per-class counts, in the order the table and the JSON show them (the table totals them).
COUNTS = ("target", "done", "remaining", "obsolete", "accepted", "rejected", "unreviewed", "short")


@dataclass(frozen=True)
class ClassStatus:
    name: str
    target: int
    done: int
    remaining: int
    obsolete: int
    rejected: int = 0
    accepted: int = 0  # live images a person accepted in `diffspec review`
    unreviewed: int = 0  # live images with no decision and no failed filter
    quality: float | None = None
    seconds_per_image: float | None = None  # median recorded for this class's live images
    short: int = 0  # target minus the class's planned images that are made and not rejected
    replace_rejected: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("name")
        return {k: d[k] for k in ("class", *COUNTS, "replace_rejected", "quality", "seconds_per_image")}


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    phase: str
    started_at: str
    ended_at: str | None
    executor: str | None
    planned: int
    made: int
    kept: int  # already in the catalog (cache hits): kept by its plan, or recorded since the plan was made
    adopted: int  # whole images a killed run had written, recorded without making them again
    failed: int
    seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StatusReport:
    classes: tuple[ClassStatus, ...]
    last_run: RunSummary | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [c.to_dict() for c in self.classes],
            "last_run": self.last_run.to_dict() if self.last_run else None,
        }


def last_run(catalog: Catalog) -> RunSummary | None:
    """The newest run that recorded its end (or, if it never did, its start)."""
    if not catalog.exists() or not catalog.parts("runs"):
        return None
    runs = catalog.runs()
    if not runs:
        return None
    by_id: dict[str, dict[str, Any]] = {}
    for row in runs:  # an end row wins over the start row of the same run
        if row["run_id"] not in by_id or row["phase"] != "started":
            by_id[row["run_id"]] = row
    row = max(by_id.values(), key=lambda r: (r["started_at"], r["run_id"]))
    adopted = kept = 0
    for entry in json.loads(row.get("log") or "[]"):
        if entry.get("event") == "adopted":
            adopted += int(entry.get("count") or 0)
        elif entry.get("event") == "plan":
            kept += int(entry.get("keep") or 0)
    started, ended = row["started_at"], row.get("ended_at")
    return RunSummary(
        run_id=row["run_id"],
        phase=row["phase"],
        started_at=started.isoformat(timespec="seconds"),
        ended_at=ended.isoformat(timespec="seconds") if ended else None,
        executor=row.get("executor"),
        planned=int(row.get("planned") or 0),
        made=int(row.get("made") or 0),
        kept=kept + int(row.get("skipped") or 0),
        adopted=adopted,
        failed=int(row.get("failed") or 0),
        seconds=(ended - started).total_seconds() if ended else None,
    )


def _seconds_per_image(catalog: Catalog, live: set[str]) -> dict[str, float]:
    if not live:
        return {}
    import pyarrow.compute as pc

    table = catalog.live_images(["fingerprint", "class_name", "seconds"])
    table = table.filter(pc.is_valid(table.column("seconds")))
    if table.num_rows == 0:
        return {}
    grouped = table.group_by("class_name").aggregate([("seconds", "approximate_median")])
    return {
        r["class_name"]: float(r["seconds_approximate_median"])
        for r in grouped.to_pylist()
        if r["seconds_approximate_median"] is not None
    }


def _latest(catalog: Catalog, stage: str, keys: tuple[str, ...], column: str) -> dict[tuple[Any, ...], Any]:
    """The latest value of ``column`` per ``keys`` in a stage table (parts are read in time order)."""
    if stage not in catalog.stages():
        return {}
    table = catalog.read_table(stage)
    if column not in table.column_names or any(k not in table.column_names for k in keys):
        return {}
    cols = [table.column(k).to_pylist() for k in keys]
    return dict(zip(zip(*cols), table.column(column).to_pylist()))


def class_status(loaded: LoadedSpec, plan: Plan, catalog: Catalog) -> StatusReport:
    live_class: dict[str, str] = {}
    if catalog.exists():
        index = catalog.index()
        live_class = dict(zip(index.fingerprints, index.class_names.to_pylist()))
    # Accepted / rejected: a person's decision, else a failed filter (diffspec.catalog.verdicts).
    states: dict[str, dict[str, int]] = defaultdict(lambda: {"accepted": 0, "rejected": 0})
    for fp, verdict in verdicts(catalog).items():
        if fp in live_class and verdict.state in ("accepted", "rejected"):
            states[live_class[fp]][verdict.state] += 1
    live_per_class: dict[str, int] = defaultdict(int)
    for cls in live_class.values():
        live_per_class[cls] += 1
    # Quality: the share of scored images the classifier recognised as the prompted class.
    recognised: dict[str, list[bool]] = defaultdict(list)
    for (fp,), value in _latest(catalog, "classifier", ("fingerprint",), "recognised").items():
        if value is not None and fp in live_class:
            recognised[live_class[fp]].append(bool(value))
    timing = _seconds_per_image(catalog, set(live_class))
    rows = []
    for c in plan.classes:
        values = recognised.get(c.name, [])
        rows.append(
            ClassStatus(
                name=c.name,
                target=c.target,
                done=c.keep,
                remaining=c.create,
                obsolete=c.remove,
                rejected=states[c.name]["rejected"],
                accepted=states[c.name]["accepted"],
                unreviewed=live_per_class[c.name] - states[c.name]["rejected"] - states[c.name]["accepted"],
                short=max(0, c.target - (c.keep - c.rejected)),
                replace_rejected=c.replace_rejected,
                quality=sum(values) / len(values) if values else None,
                seconds_per_image=timing.get(c.name),
            )
        )
    return StatusReport(tuple(rows), last_run(catalog))


def render_status(report: StatusReport, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    rows = report.classes
    table = Table(show_edge=False, header_style="bold")
    for col in ("class", *COUNTS, "quality", "s/image"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in rows:
        table.add_row(
            escape(r.name),
            str(r.target),
            f"[green]{r.done}[/]" if r.done and not r.remaining else str(r.done),
            f"[yellow]{r.remaining}[/]" if r.remaining else "0",
            f"[red]{r.obsolete}[/]" if r.obsolete else "0",
            str(r.accepted),
            f"[red]{r.rejected}[/]" if r.rejected else "0",
            str(r.unreviewed),
            f"[yellow]{r.short}[/]" if r.short else "0",
            f"{r.quality:.0%}" if r.quality is not None else "-",
            _seconds(r.seconds_per_image),
        )
    if len(rows) > 1:
        table.add_row(
            "[bold]total",
            *(f"[bold]{sum(getattr(r, f) for r in rows)}" for f in COUNTS),
            "",
            "",
        )
    console.print(table)
    for r in rows:
        if r.short and r.rejected and not r.replace_rejected:
            console.print(
                f"{r.name}: short of {r.short} accepted image{'s' if r.short != 1 else ''} "
                f"({r.rejected} rejected); `replace_rejected: true` (under stages:) plans replacements",
                highlight=False,
                markup=False,
            )
    run = report.last_run
    if run is not None:
        took = f" in {run.seconds:.1f}s" if run.seconds is not None else ""
        console.print(
            f"last run {run.run_id} ({run.phase}, started {run.started_at}{took}): made {run.made}, "
            f"kept {run.kept} already there, adopted {run.adopted}, failed {run.failed}",
            highlight=False,
            markup=False,
        )


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.1f}"
