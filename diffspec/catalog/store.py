"""The catalog store: append-only Parquet parts written atomically, read with pyarrow.

Writers never rewrite a part in place; `compact` writes the merged part first and deletes the
small ones after, and readers deduplicate by fingerprint, so every moment of a crash leaves a
readable catalog with each image once.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from diffspec.atomic import atomic_write, remove_leftovers
from diffspec.catalog.columns import column, table_from_rows
from diffspec.catalog.records import ImageRecord, RunRecord, images_table, runs_table
from diffspec.catalog.schema import IMAGES, REMOVED, RUNS
from diffspec.errors import CatalogDamaged, CatalogError

CATALOG_DIR = "catalog"
QUARANTINE_DIR = "quarantine"  # under catalog/: damaged parts moved aside by `diffspec check --repair`
# A listing races a compaction (merged part written, small ones deleted) at most this many times
# in a row before a reader gives up; each retry re-lists, so it reads one consistent snapshot.
_RELIST_ATTEMPTS = 20


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CatalogIndex:
    """What `plan` needs from the catalog: the live images' fingerprints and classes (Arrow arrays)."""

    fingerprints: list[str]
    class_names: pa.ChunkedArray | pa.Array  # Arrow: only the rows a plan removes become Python
    state: str  # changes whenever a part is added or removed
    catalog: Catalog | None = None
    fingerprint_set: frozenset[str] | set[str] = frozenset()

    def __len__(self) -> int:
        return len(self.fingerprints)

    def paths_of(self, fingerprints: list[str]) -> dict[str, str]:
        """Relative paths of some live images (read only when a plan removes something)."""
        import pyarrow.compute as pc

        if self.catalog is None or not fingerprints:
            return {}
        table = self.catalog.read_table("images", ["fingerprint", "path"])
        table = table.filter(pc.is_in(table.column("fingerprint"), value_set=column(fingerprints, pa.string())))
        return dict(zip(table.column("fingerprint").to_pylist(), table.column("path").to_pylist()))


class Catalog:
    def __init__(self, output: Path, skip_parts: Iterable[Path] = ()) -> None:
        self.output = Path(output)
        self.root = self.output / CATALOG_DIR
        self._seq = itertools.count()
        # Parts to leave out of every listing: only `diffspec check`, to look past damage it reports.
        self._skip = frozenset(Path(p).resolve() for p in skip_parts)

    # ---- layout -------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def parts(self, table: str) -> list[Path]:
        folder = self.table_dir(table) if table in ("images", "runs", "removed") else self.stage_dir(table)
        if not folder.is_dir():
            return []
        return sorted(
            p
            for p in folder.iterdir()
            if p.suffix == ".parquet" and not p.name.startswith(".") and not (self._skip and p.resolve() in self._skip)
        )

    def stages(self) -> list[str]:
        folder = self.root / "stages"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def exists(self) -> bool:
        return self.root.is_dir()

    def state(self) -> str:
        """A token of the catalog's content: part names and sizes (parts are immutable)."""
        for _ in range(_RELIST_ATTEMPTS):
            digest = hashlib.sha256()
            try:
                for table in ("images", "removed", *(f"stages/{s}" for s in self.stages())):
                    for part in self.parts(table.removeprefix("stages/")):
                        digest.update(f"{table}/{part.name}:{part.stat().st_size}\n".encode())
            except FileNotFoundError:  # a concurrent compaction removed a listed part: list again
                continue
            return digest.hexdigest()
        raise CatalogError(f"the catalog under {self.root} kept changing while it was read; try again")

    # ---- write --------------------------------------------------------------------------
    def _write_part(self, folder: Path, table: pa.Table, run_id: str, tag: str | None = None) -> Path:
        name = (
            f"part-{run_id}-{tag or next(self._seq):06}-{os.getpid()}.parquet"
            if tag is None
            else f"part-{run_id}-{tag}.parquet"
        )
        path = folder / name
        atomic_write(path, lambda fh: write_part_file(table, fh))
        return path

    def append_images(self, records: Sequence[ImageRecord], run_id: str) -> Path | None:
        """Record durable images. Call only after their files are fsynced."""
        if not records:
            return None
        return self._write_part(self.table_dir("images"), images_table(records), run_id)

    def append_run(self, record: RunRecord) -> None:
        self._write_part(
            self.table_dir("runs"), runs_table([record]), record.run_id, tag=f"{record.phase}-{next(self._seq):04}"
        )

    def append_stage(self, stage: str, table: pa.Table, run_id: str) -> Path | None:
        if table.num_rows == 0:
            return None
        return self._write_part(self.stage_dir(stage), table, run_id)

    def tombstone(self, rows: Sequence[tuple[str, str]], run_id: str) -> None:
        """Mark (fingerprint, path) rows removed. The files are deleted by the caller after this."""
        if not rows:
            return
        now = utcnow()
        table = table_from_rows(
            [{"fingerprint": fp, "path": path, "run_id": run_id, "removed_at": now} for fp, path in rows],
            REMOVED,
        )
        self._write_part(self.table_dir("removed"), table, run_id)

    def compact(self, table: str, run_id: str) -> None:
        """Merge one run's small parts of `table` into one. Safe to interrupt at any point."""
        prefix = f"part-{run_id}-"
        small = [p for p in self.parts(table) if p.name.startswith(prefix) and not p.name.endswith("-all.parquet")]
        if len(small) < 2:
            return
        merged = pa.concat_tables([pq.read_table(p) for p in small])
        folder = small[0].parent
        self._write_part(folder, merged, run_id, tag=f"{secrets.token_hex(2)}-all")
        for part in small:
            part.unlink(missing_ok=True)

    def clean_leftovers(self) -> int:
        return remove_leftovers(self.root)

    # ---- read ---------------------------------------------------------------------------
    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """Every part of ``table``, as one consistent snapshot even beside an apply.

        A part deleted between the listing and the read (a concurrent compaction, whose merged
        part is already written) makes the read start again from a new listing; from then on
        every listed part is opened before any is read, so a later deletion cannot touch it."""
        for attempt in range(_RELIST_ATTEMPTS):
            parts = self.parts(table)
            try:
                if attempt == 0:
                    return self.read_parts(parts, table, columns)
                return self._read_pinned(parts, table, columns)
            except _PartVanished:
                continue
        raise CatalogError(f"the catalog under {self.root} kept changing while it was read; try again")

    def _read_pinned(self, parts: Sequence[Path], table: str, columns: list[str] | None) -> pa.Table:
        schema = {"images": IMAGES, "runs": RUNS, "removed": REMOVED}.get(table)
        handles = []
        try:
            for part in parts:
                try:
                    handles.append(open(part, "rb"))  # noqa: SIM115 - closed below
                except FileNotFoundError:
                    raise _PartVanished() from None
            if not handles:
                return self.read_parts([], table, columns)
            try:
                if schema is not None:
                    return read_conformed(handles, schema, columns)
                tables = [pq.read_table(fh, columns=columns, page_checksum_verification=True) for fh in handles]
                return pa.concat_tables(tables, promote_options="default")
            except Exception:  # noqa: BLE001 - name the damaged part, as read_parts does
                return self.read_parts(parts, table, columns)
        finally:
            for fh in handles:
                fh.close()

    def read_parts(self, parts: Sequence[Path], table: str, columns: list[str] | None = None) -> pa.Table:
        """These parts of ``table``, concatenated in order. A part that cannot be read raises
        `CatalogDamaged` naming it (never a partial result)."""
        schema = {"images": IMAGES, "runs": RUNS, "removed": REMOVED}.get(table)
        if not parts:
            if schema is None:
                return pa.table({})
            # Not `schema.empty_table()`: it imports pandas (0.3 s of a fresh `plan`).
            empty = pa.Table.from_batches([], schema=schema)
            return empty.select(columns) if columns else empty
        try:
            if schema is not None:
                return read_conformed(parts, schema, columns)
            tables = [pq.read_table(p, columns=columns, page_checksum_verification=True) for p in parts]
            return pa.concat_tables(tables, promote_options="default")
        except Exception as exc:  # noqa: BLE001 - damage surfaces as OSError, ArrowInvalid, UnicodeDecodeError...
            if any(not p.exists() for p in parts):
                raise _PartVanished() from exc
            damaged = [(p, why) for p in parts if (why := part_problem(p, schema)) is not None]
            if not damaged:
                raise CatalogError(f"cannot read catalog table {table!r} under {self.root}: {exc}") from exc
            shown = "; ".join(f"{self.shown(p)} ({why})" for p, why in damaged[:3])
            more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
            raise CatalogDamaged(
                f"damaged catalog part{'s' if len(damaged) != 1 else ''}: {shown}{more}. Nothing was read around it: "
                "run `diffspec check SPEC` to list every problem and `diffspec check SPEC --repair` to quarantine "
                "damaged parts and rebuild their rows from the image files",
                tuple(str(p) for p, _ in damaged),
            ) from None

    def shown(self, path: Path) -> str:
        """A catalog file as messages name it: relative to the output root."""
        try:
            return str(Path(path).relative_to(self.output))
        except ValueError:
            return str(path)

    def removed_fingerprints(self) -> set[str]:
        return set(self.read_table("removed", ["fingerprint"]).column("fingerprint").to_pylist())

    def _drop_tombstoned(self, table: pa.Table, removed: pa.Table) -> pa.Table:
        """Drop rows a tombstone removed: those created before their fingerprint's latest
        tombstone. An image made again after it was removed (a target lowered, gc'd, raised
        back) is live again; without this it would be re-made by every apply."""
        import pyarrow.compute as pc

        # Times compared as int64 microseconds: a tz-aware timestamp's ``as_py`` imports pandas.
        last: dict[str, Any] = {}
        removed_at = removed.column("removed_at").cast(pa.int64()).to_pylist()
        for fp, at in zip(removed.column("fingerprint").to_pylist(), removed_at):
            if fp not in last or (at is not None and (last[fp] is None or at > last[fp])):
                last[fp] = at
        hit = pc.is_in(table.column("fingerprint"), value_set=column(list(last), pa.string()))
        rows = pc.indices_nonzero(hit).to_pylist()
        if not rows:
            return table
        fps = table.column("fingerprint").take(column(rows, pa.int64())).to_pylist()
        created = table.column("created_at").take(column(rows, pa.int64())).cast(pa.int64()).to_pylist()
        dead = {i for i, fp, at in zip(rows, fps, created) if at is None or last[fp] is None or at <= last[fp]}
        if not dead:
            return table
        return table.take(column([i for i in range(table.num_rows) if i not in dead], pa.int64()))

    def index(self) -> CatalogIndex:
        """Live images (first row per fingerprint, tombstones dropped), as Arrow columns."""
        state = self.state()
        removed = self.read_table("removed", ["fingerprint", "removed_at"])
        if len(removed):
            table = self.read_table("images", ["fingerprint", "class_name", "created_at"])
            table = self._drop_tombstoned(table, removed).select(["fingerprint", "class_name"])
        else:
            table = self.read_table("images", ["fingerprint", "class_name"])
        fp_list = table.column("fingerprint").to_pylist()
        fp_set = set(fp_list)
        if len(fp_set) != len(fp_list):
            # A crash between a compaction's write and its clean-up leaves a row twice: keep the first.
            keep = first_positions(fp_list)
            table = table.take(column(keep, pa.int64()))
            fp_list = [fp_list[i] for i in keep]
        return CatalogIndex(fp_list, table.column("class_name"), state, self, fp_set)

    def live_images(self, columns: list[str] | None = None) -> pa.Table:
        """The images table, deduplicated and without tombstoned rows."""
        removed = self.read_table("removed", ["fingerprint", "removed_at"])
        extra = (
            [c for c in ("fingerprint", "created_at") if columns is not None and c not in columns]
            if len(removed)
            else []
        )
        table = self.read_table("images", columns + extra if columns is not None else None)
        if table.num_rows == 0 or "fingerprint" not in table.column_names:
            return table
        if len(removed):
            table = self._drop_tombstoned(table, removed)
            if extra:
                table = table.select(columns)
            if table.num_rows == 0 or "fingerprint" not in table.column_names:
                return table
        fps = table.column("fingerprint").to_pylist()
        seen: set[str] = set()
        keep = []
        for i, fp in enumerate(fps):
            if fp not in seen:
                seen.add(fp)
                keep.append(i)
        return table if len(keep) == table.num_rows else table.take(column(keep, pa.int64()))

    def runs(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.read_table("runs").to_pylist()
        return rows


def read_conformed(sources: Sequence[Any], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Parts (paths or open files) as one table of ``schema``'s columns, in the order given: a
    column an older part lacks reads as nulls. Each part is read by Parquet's file reader, in a
    few threads (the reads release the GIL), with page checksums verified. Not
    ``pq.read_table(list)``: that goes through ``pyarrow.dataset``, whose import alone is 0.4 s
    of every fresh `plan` or `status` (measured on 1M rows in 100 parts: 0.2-0.5 s here against
    0.6-0.8 s for the dataset scan, fresh process)."""
    wanted = [n for n in (columns or schema.names) if n in schema.names]
    target = pa.schema([schema.field(n) for n in wanted])

    def one(source: Any) -> pa.Table:
        reader = pq.ParquetFile(source, page_checksum_verification=True)
        present = set(reader.schema_arrow.names)
        got = reader.read(columns=[n for n in wanted if n in present], use_threads=False)
        arrays = [got.column(n) if n in present else pa.nulls(got.num_rows, target.field(n).type) for n in wanted]
        return pa.Table.from_arrays(arrays, names=wanted).cast(target)

    if len(sources) < 4:
        tables = [one(s) for s in sources]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            tables = list(pool.map(one, sources))
    if not tables:
        return pa.Table.from_batches([], schema=target)
    return pa.concat_tables(tables)


#: Columns whose every value is distinct: a dictionary there is only overhead (reading a million
#: dictionary-encoded fingerprints took twice as long as plain ones; the file is no smaller).
UNIQUE_COLUMNS = frozenset({"fingerprint", "path", "sha256", "canonical"})


def write_part_file(table: pa.Table, fh: Any) -> None:
    """One catalog part: zstd, page checksums (a flipped byte in a data page fails the read
    instead of decoding wrong), dictionaries only where values repeat."""
    dictionary = [n for n in table.column_names if n not in UNIQUE_COLUMNS]
    pq.write_table(table, fh, compression="zstd", write_page_checksum=True, use_dictionary=dictionary)


class _PartVanished(Exception):
    """A listed part is gone: a concurrent compaction replaced it. Re-list and read again."""


def part_problem(path: Path, schema: pa.Schema | None = None) -> str | None:
    """Why one Parquet part cannot be read (None if it reads whole, checksums and all)."""
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except FileNotFoundError:
        return None  # removed by a concurrent compaction after the listing: gone, not damaged
    except Exception as exc:  # noqa: BLE001 - every decoding failure is damage
        reason = " ".join(
            str(exc).replace(f"'{path}'", "").replace("Could not open Parquet input source :", "").split()
        )
        reason = reason.split(". ")[0][:120] or type(exc).__name__
        return f"unreadable: {reason}"
    if schema is not None:
        key = schema.names[0]  # fingerprint (images, removed) or run_id (runs): every row has it
        wrong = [
            f.name
            for f in schema
            if f.name in table.column_names and not table.schema.field(f.name).type.equals(f.type)
        ]
        if key not in table.column_names:
            return f"not a part of this table: no {key} column"
        if wrong:
            return f"not a part of this table: columns of the wrong type: {', '.join(wrong)}"
    return None


def first_positions(values: Sequence[str]) -> list[int]:
    """The position of each value's first occurrence, in order."""
    seen: set[str] = set()
    keep = []
    for i, value in enumerate(values):
        if value not in seen:
            seen.add(value)
            keep.append(i)
    return keep
