"""Read-only SQL over the catalog with DuckDB.

The catalog's tables are registered as Arrow tables in an in-memory DuckDB; then external
access is switched off and the configuration locked, and only SELECT-like statements are
accepted. A query can read the catalog and nothing else, and can change nothing.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from diffspec.catalog.store import Catalog
from diffspec.errors import CatalogError

_ALLOWED = {"SELECT", "EXPLAIN"}


def _statement_types(con: Any, sql: str) -> list[str]:
    try:
        statements = con.extract_statements(sql)
    except Exception as exc:  # duckdb.ParserException and friends
        raise CatalogError(f"SQL does not parse: {exc}") from None
    return [str(s.type).split(".")[-1] for s in statements]


def connect(catalog: Catalog) -> Any:
    """An in-memory DuckDB connection with the catalog's views, locked down for reading."""
    import duckdb

    con = duckdb.connect(":memory:")
    images = catalog.live_images()
    runs = catalog.read_table("runs")
    removed = catalog.read_table("removed")
    con.register("images_arrow", images)
    con.execute("CREATE VIEW images AS SELECT * FROM images_arrow")
    con.register("runs_arrow", runs)
    # A run writes one row when it starts and one when it ends: show its latest state.
    con.execute(
        "CREATE VIEW runs AS SELECT * FROM runs_arrow "
        "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY (phase = 'started'), ended_at DESC NULLS LAST) = 1"
    )
    con.register("removed_arrow", removed)
    con.execute("CREATE VIEW removed AS SELECT * FROM removed_arrow")
    for stage in catalog.stages():
        table = catalog.read_table(stage)
        if table.num_rows == 0 and not table.column_names:
            continue
        if "fingerprint" in table.column_names and images.num_rows:
            live = pa.array(images.column("fingerprint"))
            import pyarrow.compute as pc

            table = table.filter(pc.is_in(table.column("fingerprint"), value_set=live))
        con.register(f"{stage}_arrow", table)
        if stage == "segment" and {"segment_fingerprint", "run_id", "instance"} <= set(table.column_names):
            # A crash between a compaction's write and its clean-up leaves a part's rows twice.
            con.execute(
                "CREATE VIEW segment AS SELECT * FROM segment_arrow QUALIFY row_number() OVER "
                "(PARTITION BY segment_fingerprint, run_id, instance) = 1"
            )
            # The two kinds of rows the stage records, by the names users look for.
            con.execute("CREATE VIEW detections AS SELECT * FROM segment WHERE instance IS NOT NULL")
            con.execute("CREATE VIEW masks AS SELECT * FROM segment WHERE kept")
            continue
        con.execute(f'CREATE VIEW "{stage}" AS SELECT * FROM "{stage}_arrow"')
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run_query(catalog: Catalog, sql: str) -> pa.Table:
    """Run one read-only SQL query; returns an Arrow table."""
    import duckdb

    con = connect(catalog)
    try:
        kinds = _statement_types(con, sql)
        if not kinds:
            raise CatalogError("no SQL statement given")
        if len(kinds) > 1:
            raise CatalogError(f"give one statement at a time, got {len(kinds)}")
        if kinds[0] not in _ALLOWED:
            raise CatalogError(f"`diffspec query` is read-only: {kinds[0]} statements are not allowed (use SELECT)")
        try:
            relation = con.sql(sql)
            if relation is None:  # a statement with no result set (e.g. EXPLAIN of nothing)
                return pa.table({})
            # duckdb 2.x: to_arrow_table on the relation avoids a DB-API copy; older: .arrow()
            fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
            return fetch()
        except duckdb.Error as exc:
            raise CatalogError(f"query failed: {exc}") from None
    finally:
        con.close()


def tables(catalog: Catalog) -> list[str]:
    stages = catalog.stages()
    views = ["detections", "masks"] if "segment" in stages else []
    return ["images", "runs", "removed", *stages, *views]
