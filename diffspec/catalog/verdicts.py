"""Is an image accepted, rejected or not yet reviewed? One answer for status, plan, exports and the report.

Two sources decide, both append-only stage tables of the catalog:

- ``filters``: a filter's verdict per image (``passed``), written by the quality filters;
  for each (image, filter) the latest row counts.
- ``review``: a person's decision per image, written by ``diffspec review``: ``accept``,
  ``reject``, or ``clear`` (an undo back to no decision). The latest row per image counts.

A person's decision wins over every filter: an image a filter rejected and a person accepted
is accepted. With no decision, an image any filter's latest verdict failed is rejected (by the
filter); otherwise it is unreviewed, which counts as good towards a class's target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from diffspec.catalog.columns import column
from diffspec.catalog.store import Catalog

FILTERS_TABLE = "filters"
REVIEW_TABLE = "review"
Decision = Literal["accept", "reject", "clear"]
DECISIONS: tuple[Decision, ...] = ("accept", "reject", "clear")
State = Literal["accepted", "rejected", "unreviewed"]

#: One row per (image, filter) verdict. ``config_hash`` is the filter unit's fingerprint
#: (diffspec.plan.filter_identity: the filter, its parameters and model, the image and, for
#: near-duplicates, what it was compared with): the latest row per (image, filter) counts, and
#: the plan takes a unit as done when that row carries the unit's fingerprint.
FILTERS_SCHEMA = pa.schema(
    [
        ("fingerprint", pa.string()),
        ("class_name", pa.string()),
        ("filter", pa.string()),
        ("config_hash", pa.string()),
        ("passed", pa.bool_()),
        ("value", pa.float64()),
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

REVIEW_SCHEMA = pa.schema(
    [
        ("fingerprint", pa.string()),
        ("class_name", pa.string()),
        ("decision", pa.string()),
        ("session_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where one image stands. ``failed_filters``: the filters whose latest verdict failed,
    kept even when a person's decision overrules them, so a page can say so."""

    state: State
    by: Literal["review", "filter"] | None
    failed_filters: tuple[str, ...] = ()

    @property
    def rejected(self) -> bool:
        return self.state == "rejected"


UNREVIEWED = Verdict("unreviewed", None)


def _columns(catalog: Catalog, table: str, names: tuple[str, ...]) -> list[list[object]] | None:
    """The columns of a stage table in the order its rows were made: by ``created_at`` where the
    table has it (part names sort by run id, which two runs in one second do not order), stable
    for ties, so a later decision always wins."""
    if not catalog.exists() or table not in catalog.stages():
        return None
    data = catalog.read_table(table)
    if any(n not in data.column_names for n in names):
        return None
    if "created_at" in data.column_names and data.num_rows > 1:
        import pyarrow.compute as pc

        rows = pa.table({"t": data.column("created_at"), "i": column(range(data.num_rows), pa.int64())})
        keys = [("t", "ascending"), ("i", "ascending")]
        if int(pa.__version__.split(".")[0]) >= 25:  # null placement per key; the global option warns there
            order = pc.sort_indices(rows, sort_keys=[(*key, "at_start") for key in keys])
        else:
            order = pc.sort_indices(rows, sort_keys=keys, null_placement="at_start")
        data = data.take(order)
    return [data.column(n).to_pylist() for n in names]


def latest_filter_verdicts(catalog: Catalog) -> dict[tuple[str, str], tuple[str, bool]]:
    """Per (image, filter), the latest verdict row's (config_hash, passed)."""
    cols = _columns(catalog, FILTERS_TABLE, ("fingerprint", "filter", "config_hash", "passed"))
    if cols is None:  # a table written without config hashes (by hand, or before they existed)
        cols = _columns(catalog, FILTERS_TABLE, ("fingerprint", "filter", "passed"))
        if cols is None:
            return {}
        cols = [cols[0], cols[1], [None] * len(cols[0]), cols[2]]
    return {(str(fp), str(name)): (str(chash or ""), passed is not False) for fp, name, chash, passed in zip(*cols)}


def latest_filter_failures(catalog: Catalog) -> dict[str, tuple[str, ...]]:
    """Per image, the filters whose latest verdict failed (parts are read in time order)."""
    failed: dict[str, list[str]] = {}
    for (fp, name), (_chash, passed) in latest_filter_verdicts(catalog).items():
        if not passed:
            failed.setdefault(fp, []).append(name)
    return {fp: tuple(sorted(names)) for fp, names in failed.items()}


def latest_filter_scores(catalog: Catalog) -> dict[str, dict[str, tuple[bool | None, float | None]]]:
    """Per image and filter, the latest verdict and the value it measured: what the review page
    and the report show beside the state :func:`verdicts` gives."""
    cols = _columns(catalog, FILTERS_TABLE, ("fingerprint", "filter", "passed", "value"))
    if cols is None:
        return {}
    out: dict[str, dict[str, tuple[bool | None, float | None]]] = {}
    for fp, name, passed, value in zip(*cols):
        out.setdefault(str(fp), {})[str(name)] = (
            None if passed is None else bool(passed),
            None if not isinstance(value, (int, float)) else float(value),
        )
    return out


def latest_decisions(catalog: Catalog) -> dict[str, Decision]:
    """Per image, a person's latest decision; an undo (``clear``) removes it."""
    cols = _columns(catalog, REVIEW_TABLE, ("fingerprint", "decision"))
    if cols is None:
        return {}
    latest: dict[str, Decision] = {}
    for fp, decision in zip(*cols):
        if decision in ("accept", "reject"):
            latest[str(fp)] = "accept" if decision == "accept" else "reject"
        elif decision == "clear":
            latest.pop(str(fp), None)
    return latest


def decision_histories(catalog: Catalog) -> dict[str, list[Decision]]:
    """Per image, every decision a person made, oldest first (``clear`` included): what the
    review page's undo walks back through. :func:`latest_decisions` is the last of each."""
    cols = _columns(catalog, REVIEW_TABLE, ("fingerprint", "decision"))
    if cols is None:
        return {}
    history: dict[str, list[Decision]] = {}
    for fp, decision in zip(*cols):
        if decision in DECISIONS:
            history.setdefault(str(fp), []).append(
                "accept" if decision == "accept" else "reject" if decision == "reject" else "clear"
            )
    return history


def verdicts(catalog: Catalog) -> dict[str, Verdict]:
    """Every image that has a verdict other than plain unreviewed; absent means :data:`UNREVIEWED`."""
    failed = latest_filter_failures(catalog)
    decisions = latest_decisions(catalog)
    out: dict[str, Verdict] = {fp: Verdict("rejected", "filter", names) for fp, names in failed.items()}
    for fp, decision in decisions.items():
        out[fp] = Verdict("accepted" if decision == "accept" else "rejected", "review", failed.get(fp, ()))
    return out


def rejected_fingerprints(catalog: Catalog) -> set[str]:
    """The images that do not count: rejected by a person, or by a filter a person did not overrule."""
    return {fp for fp, v in verdicts(catalog).items() if v.rejected}
