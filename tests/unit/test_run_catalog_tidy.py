"""What killed runs leave in the catalog is tidied by the next apply: small parts merged, rows
a half-finished compaction left twice kept once. Real Parquet parts, no model."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from diffspec.catalog.recorder import Recorder, merge_run_parts, tidy_catalog
from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog


def rows(fps: list[str], run: str) -> list[ImageRecord]:
    return [
        ImageRecord(
            fingerprint=fp, class_name="a", path=f"images/a/{fp}.png", run_id=run, created_at=datetime.now(timezone.utc)
        )
        for fp in fps
    ]


def raw_fps(cat: Catalog) -> list[str]:
    return cat.read_table("images", ["fingerprint"]).column("fingerprint").to_pylist()


def test_a_killed_runs_parts_are_merged_and_a_half_done_compaction_is_finished(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    killed = "20260101T000000-aaaaaa"
    for i in range(3):
        cat.append_images(rows([f"k{i}a", f"k{i}b"], killed), killed)
    # a run killed between its compaction's write and its clean-up: merged part + old parts
    half = "20260101T000100-bbbbbb"
    cat.append_images(rows(["h1", "h2"], half), half)
    cat.append_images(rows(["h3"], half), half)
    cat.compact("images", half)
    cat.append_images(rows(["h1", "h2"], half), half)  # as if the old part were still there
    assert len(raw_fps(cat)) == 11 and len(cat.parts("images")) == 5

    notes = tidy_catalog(cat, current_run="20260101T000200-cccccc")
    assert len(notes) == 2
    fps = raw_fps(cat)
    assert sorted(fps) == sorted(["k0a", "k0b", "k1a", "k1b", "k2a", "k2b", "h1", "h2", "h3"])
    assert len(cat.parts("images")) == 2
    assert tidy_catalog(cat, current_run="x") == []  # idempotent


def test_the_current_runs_parts_are_left_alone_and_merged_at_its_end(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    run = "20260101T000300-dddddd"
    rec = Recorder(cat, run, compact_every=2, flush_seconds=0)  # a part per call
    for i in range(5):
        assert len(rec(rows([f"r{i}"], run))) == 1
    assert rec(rows(["r0"], run)) == []  # each fingerprint once per run
    assert tidy_catalog(cat, current_run=run) == []
    assert merge_run_parts(cat, run) >= 2
    assert len(cat.parts("images")) == 1 and sorted(raw_fps(cat)) == [f"r{i}" for i in range(5)]


def test_rows_go_out_as_one_part_per_interval_and_the_rest_at_flush(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    run = "20260101T000400-eeeeee"
    rec = Recorder(cat, run, flush_seconds=3600)
    rec(rows(["f0"], run))  # the first batch is recorded at once
    assert raw_fps(cat) == ["f0"] and rec.pending == 0
    for i in range(1, 4):
        assert len(rec(rows([f"f{i}"], run))) == 1
    assert rec(rows(["f2"], run)) == []  # taken once, even while it waits
    assert raw_fps(cat) == ["f0"] and rec.pending == 3
    rec.flush()
    assert sorted(raw_fps(cat)) == ["f0", "f1", "f2", "f3"] and len(cat.parts("images")) == 2
    rec.flush()  # nothing waits: no empty part
    assert len(cat.parts("images")) == 2


def test_parts_and_merged_parts_keep_unique_columns_out_of_dictionaries(tmp_path: Path) -> None:
    """Fingerprints and paths never repeat within a part: a dictionary doubled the read of a
    million of them. Merged run parts are written the same way as every other part."""
    import pyarrow.parquet as pq

    cat = Catalog(tmp_path)
    run = "20260101T000500-ffffff"
    for i in range(3):
        cat.append_images(rows([f"m{i}a", f"m{i}b"], run), run)
    assert merge_run_parts(cat, run) == 3
    (merged,) = cat.parts("images")
    meta = pq.ParquetFile(merged).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    for unique in ("fingerprint", "path"):
        assert "RLE_DICTIONARY" not in encodings[unique] and "PLAIN" in encodings[unique], encodings[unique]
    assert "RLE_DICTIONARY" in encodings["class_name"]
    assert sorted(raw_fps(cat)) == sorted(f"m{i}{x}" for i in range(3) for x in "ab")
