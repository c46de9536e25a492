"""Accepted, rejected or unreviewed: a person's decision wins over filters, an undo falls back."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import REVIEW_SCHEMA, REVIEW_TABLE, rejected_fingerprints, verdicts
from diffspec.stages.filters import FILTERS_SCHEMA, FILTERS_TABLE

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _filters(catalog: Catalog, rows: list[tuple[str, str, bool]], minute: int, run: str = "r1") -> None:
    table = pa.Table.from_pylist(
        [
            {
                "fingerprint": fp,
                "class_name": "a",
                "filter": name,
                "config_hash": "h",
                "passed": passed,
                "value": 0.0,
                "run_id": run,
                "created_at": T0 + timedelta(minutes=minute),
            }
            for fp, name, passed in rows
        ],
        schema=FILTERS_SCHEMA,
    )
    catalog.append_stage(FILTERS_TABLE, table, run)


def _review(catalog: Catalog, rows: list[tuple[str, str]], minute: int, session: str) -> None:
    table = pa.Table.from_pylist(
        [
            {
                "fingerprint": fp,
                "class_name": "a",
                "decision": d,
                "session_id": session,
                "created_at": T0 + timedelta(minutes=minute, seconds=i),
            }
            for i, (fp, d) in enumerate(rows)
        ],
        schema=REVIEW_SCHEMA,
    )
    catalog.append_stage(REVIEW_TABLE, table, session)


def test_no_tables_means_nothing_rejected(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    assert verdicts(catalog) == {} and rejected_fingerprints(catalog) == set()


def test_latest_filter_verdict_counts_per_filter(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    _filters(catalog, [("f1", "clip_score", False), ("f2", "clip_score", True), ("f3", "blank", False)], 0)
    _filters(catalog, [("f1", "clip_score", True), ("f2", "near_duplicate", False)], 1, run="r2")
    got = verdicts(catalog)
    assert "f1" not in got  # its later clip verdict passed
    assert got["f2"].state == "rejected" and got["f2"].failed_filters == ("near_duplicate",)
    assert got["f3"].by == "filter"
    assert rejected_fingerprints(catalog) == {"f2", "f3"}


def test_a_person_overrules_filters_and_undo_falls_back(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    _filters(catalog, [("f1", "blank", False), ("f2", "blank", True)], 0)
    _review(catalog, [("f1", "accept"), ("f2", "reject"), ("f3", "reject"), ("f3", "clear")], 1, "s1")
    got = verdicts(catalog)
    assert got["f1"].state == "accepted" and got["f1"].by == "review" and got["f1"].failed_filters == ("blank",)
    assert got["f2"].state == "rejected" and got["f2"].by == "review"
    assert "f3" not in got  # rejected, then undone: no decision, no failed filter
    # A later session (a restarted server) whose id sorts first still wins by time.
    _review(catalog, [("f1", "clear"), ("f2", "accept")], 2, "a-session")
    got = verdicts(catalog)
    assert got["f1"].state == "rejected" and got["f1"].by == "filter"
    assert got["f2"].state == "accepted"
    assert rejected_fingerprints(catalog) == {"f1"}
