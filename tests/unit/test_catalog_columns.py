"""The catalog's Arrow builder (diffspec.catalog.columns) makes exactly what pyarrow's own
conversion makes, for every type it builds itself and for what it hands back to pyarrow, and
writing the catalog's tables with it never imports pandas."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from diffspec.catalog.columns import column, table, table_from_rows
from diffspec.catalog.schema import IMAGES, REMOVED, RUNS, TS

CASES: list[tuple[list[Any], pa.DataType]] = [
    (["a", None, "ünïcødé ✓", "", "x" * 10_000], pa.string()),
    ([], pa.string()),
    ([None, None], pa.string()),
    ([1, None, -(2**63), 2**63 - 1, 0], pa.int64()),
    ([1, None, 3, -(2**31)], pa.int32()),
    ([255, 0, None], pa.uint8()),
    ([1.5, None, 2, -0.0, 1e308], pa.float64()),
    ([True, None, False, True, True, False, True, False, True], pa.bool_()),
    (
        [
            datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
            None,
            datetime(2026, 1, 2, 3, 4, 5),  # naive: read as written
            datetime(2020, 5, 5, 12, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            datetime(1960, 1, 1, tzinfo=timezone.utc),  # before the epoch
        ],
        TS,
    ),
    ([["a", "b"], None, [], ("x",), ["ü", None]], pa.list_(pa.string())),
    # handed back to pyarrow: its own conversion rules apply
    ([np.int64(3), 4], pa.int64()),
    ([True, 2], pa.int64()),
    ([1.0, 2], pa.int64()),
    ([b"bytes", "text"], pa.string()),
    (["2026-01-01T00:00:00"], pa.string()),
    ([{"a": 1}], pa.struct([("a", pa.int64())])),
]


@pytest.mark.parametrize("values,type_", CASES, ids=[f"{i}-{t}" for i, (_, t) in enumerate(CASES)])
def test_a_column_equals_pyarrows_own_conversion(values: list[Any], type_: pa.DataType) -> None:
    try:
        expected = pa.array(values, type_)
    except Exception as exc:  # pyarrow refuses it: so must we, with its error
        with pytest.raises(type(exc)):
            column(values, type_)
        return
    mine = column(values, type_)
    mine.validate(full=True)
    assert mine.type == type_
    assert mine.equals(expected), (mine.to_pylist(), expected.to_pylist())


def test_nan_survives_and_bad_values_raise_pyarrows_errors() -> None:
    got = column([math.nan, 1.0], pa.float64()).to_pylist()
    assert math.isnan(got[0]) and got[1] == 1.0
    with pytest.raises(OverflowError):
        column([2**64], pa.int64())
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        column(["not a number"], pa.int64())


def test_tables_take_missing_fields_and_keys_as_nulls() -> None:
    rows = [{"fingerprint": "f1", "path": "images/a/f1.png", "extra": 1}, {"fingerprint": "f2"}]
    mine = table_from_rows(rows, REMOVED)
    assert mine.equals(pa.Table.from_pylist(rows, schema=REMOVED))
    assert table({}, RUNS).num_rows == 0 and table({}, RUNS).schema == RUNS


WRITER = r"""
import sys
from datetime import datetime, timezone
from pathlib import Path
from diffspec.catalog.records import ImageRecord, RunRecord
from diffspec.catalog.recorder import Recorder, merge_run_parts
from diffspec.catalog.store import Catalog

cat = Catalog(Path(sys.argv[1]))
run = "20260101T000000-aaaaaa"
rec = Recorder(cat, run, flush_seconds=0)
now = datetime.now(timezone.utc)
for part in range(3):
    rec([ImageRecord(fingerprint=f"{part}-{i}", class_name="a", classes=("a", "b"), path=f"images/a/{part}-{i}.png",
                     seed=i, guidance=7.5, width=64, run_id=run, created_at=now) for i in range(4)])
cat.append_run(RunRecord(run, "started", "d", "s.yaml", "h", None, now, None, "inprocess", "[]", 1, "{}",
                         12, 0, 0, 0, "host", 1, "[]"))
merge_run_parts(cat, run)
cat.tombstone([("0-0", "images/a/0-0.png")], run)
assert len(cat.index()) == 11, len(cat.index())
print(sorted(m for m in ("pandas",) if m in sys.modules))
"""


def test_writing_the_catalog_does_not_import_pandas(tmp_path: Path) -> None:
    """pandas is installed here (the test set-up has `datasets`): the rows of images, runs and
    tombstones, merged parts and reads all go without it, as a fresh apply's catalog work does."""
    pytest.importorskip("pandas")
    proc = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_images_records_round_trip_through_the_builder(tmp_path: Path) -> None:
    from diffspec.catalog.records import ImageRecord, images_table

    now = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
    records = [
        ImageRecord(fingerprint="f", class_name="a", path="p", classes=("a",), seed=3, created_at=now, seconds=0.5),
        ImageRecord(fingerprint="g", class_name="b", path="q"),
    ]
    got = images_table(records)
    assert got.schema == IMAGES
    assert got.column("classes").to_pylist() == [["a"], []]
    assert got.column("created_at").to_pylist() == [now, None]
    assert got.column("seed").to_pylist() == [3, None]
