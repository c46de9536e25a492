"""Write a query result as a rich table, CSV, JSON or Parquet."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from diffspec.atomic import atomic_write, atomic_write_bytes
from diffspec.errors import CatalogError

MAX_TABLE_ROWS = 200


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def write_table(table: pa.Table, fmt: str, path: Path | None, console: Any) -> None:
    if fmt == "parquet":
        if path is None:
            raise CatalogError("--format parquet needs --out FILE")
        import pyarrow.parquet as pq

        atomic_write(path, lambda fh: pq.write_table(table, fh))
        return
    if fmt == "csv":
        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        data = buf.getvalue()
    elif fmt == "json":
        rows = [{k: _jsonable(v) for k, v in row.items()} for row in table.to_pylist()]
        data = (json.dumps(rows, indent=2, ensure_ascii=False, default=str) + "\n").encode()
    else:
        if path is not None:
            raise CatalogError("--out needs --format csv, json or parquet")
        from rich.table import Table

        view = Table(show_lines=False)
        for name in table.column_names:
            view.add_column(name)
        for row in table.slice(0, MAX_TABLE_ROWS).to_pylist():
            view.add_row(*("" if v is None else str(v) for v in row.values()))
        console.print(view)
        if table.num_rows > MAX_TABLE_ROWS:
            console.print(f"... {table.num_rows - MAX_TABLE_ROWS} more rows (use --format csv or json)")
        else:
            console.print(f"{table.num_rows} row{'s' if table.num_rows != 1 else ''}")
        return
    if path is None:
        sys.stdout.buffer.write(data)
    else:
        atomic_write_bytes(path, data)
