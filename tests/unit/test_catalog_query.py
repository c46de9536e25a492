"""`diffspec query` is read-only SQL over the catalog: it can read the catalog's views and
nothing else, and can change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from diffspec.catalog.query import run_query
from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog
from diffspec.cli import app
from diffspec.errors import CatalogError


def _row(fp: str, cls: str = "cat", **extra: Any) -> ImageRecord:
    return ImageRecord(fingerprint=fp, class_name=cls, path=f"images/{cls}/{fp}.png", **extra)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "out")
    cat.append_images([_row("a", seed=1), _row("b", seed=2), _row("c", "dog", seed=3)], "run-1")
    return cat


@pytest.mark.parametrize(
    "sql",
    [
        "COPY images TO '{tmp}/leak.csv'",
        "COPY (SELECT * FROM images) TO '{tmp}/leak.parquet' (FORMAT parquet)",
        "ATTACH '{tmp}/other.duckdb' AS other",
        "CREATE TABLE t AS SELECT * FROM images",
        "CREATE VIEW v AS SELECT 1",
        "INSERT INTO images (fingerprint) VALUES ('z')",
        "UPDATE images SET seed = 0",
        "DELETE FROM images",
        "DROP VIEW images",
        "PRAGMA enable_profiling",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "INSTALL httpfs",
        "LOAD httpfs",
        "EXPORT DATABASE '{tmp}/dump'",
        "CALL pragma_version()",
        "SELECT 1; SELECT 2",
        "",
    ],
)
def test_only_select_statements_are_accepted(catalog: Catalog, tmp_path: Path, sql: str) -> None:
    with pytest.raises(CatalogError):
        run_query(catalog, sql.format(tmp=tmp_path))
    assert not any(p.name in ("leak.csv", "leak.parquet", "other.duckdb", "dump") for p in tmp_path.iterdir())
    assert run_query(catalog, "SELECT count(*) AS n FROM images").column("n").to_pylist() == [3]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{catalog}/images/*.parquet')",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/leak.csv'",
        "WITH x AS (SELECT * FROM read_csv_auto('/etc/hostname')) SELECT * FROM x",
    ],
)
def test_queries_cannot_touch_files(catalog: Catalog, tmp_path: Path, sql: str) -> None:
    with pytest.raises(CatalogError):
        run_query(catalog, sql.format(tmp=tmp_path, catalog=catalog.root))
    assert not (tmp_path / "leak.csv").exists()


def test_select_reads_the_catalog_views(catalog: Catalog) -> None:
    table = run_query(catalog, "SELECT class_name, count(*) AS n FROM images GROUP BY 1 ORDER BY 1")
    assert table.to_pylist() == [{"class_name": "cat", "n": 2}, {"class_name": "dog", "n": 1}]
    assert run_query(catalog, "SELECT count(*) AS n FROM runs").column("n").to_pylist() == [0]
    assert run_query(catalog, "EXPLAIN SELECT * FROM images").num_rows >= 1


def test_images_view_deduplicates_and_drops_tombstones(catalog: Catalog) -> None:
    # "a" is written a second time (a crash between a compaction's write and its clean-up)...
    catalog.append_images([_row("a", seed=1), _row("d", seed=4)], "run-2")
    # ...and "b" is removed by gc.
    catalog.tombstone([("b", "images/cat/b.png")], "run-3")
    rows = run_query(catalog, "SELECT fingerprint FROM images ORDER BY fingerprint").column("fingerprint").to_pylist()
    assert rows == ["a", "c", "d"]
    assert sorted(catalog.live_images().column("fingerprint").to_pylist()) == ["a", "c", "d"]
    index = catalog.index()
    assert sorted(index.fingerprints) == ["a", "c", "d"] and len(index) == 3
    assert run_query(catalog, "SELECT fingerprint FROM removed").column("fingerprint").to_pylist() == ["b"]


def test_catalog_state_changes_with_every_part(catalog: Catalog) -> None:
    before = catalog.state()
    catalog.append_images([_row("e")], "run-4")
    after = catalog.state()
    catalog.tombstone([("e", "images/cat/e.png")], "run-5")
    assert len({before, after, catalog.state()}) == 3


def test_cli_query_refuses_writes_without_traceback(catalog: Catalog) -> None:
    result = CliRunner().invoke(app, ["query", "DELETE FROM images", "--output", str(catalog.output)])
    assert result.exit_code == 1
    assert "read-only" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        app, ["query", "SELECT count(*) AS n FROM images", "--output", str(catalog.output), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert '"n": 3' in result.stdout
