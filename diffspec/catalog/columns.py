"""Arrow columns and tables from Python values, without pyarrow's pandas probe.

``pa.array`` (and ``Table.from_pydict`` / ``from_pylist``, which call it) imports pandas on
its first call whenever pandas is installed, to ask whether the input is a pandas object
(``pandas-shim.pxi``; no setting turns it off). That import is 0.13-0.3 s of every fresh
``plan``, ``status`` and ``apply``, on machines where ML users nearly always have pandas. The
catalog's columns have a few types, so they are built here from their buffers (validity
bitmap, offsets, values) with numpy, which pyarrow takes without asking pandas. Any other type,
or a value of an unexpected kind, goes to ``pa.array``, so its conversion rules and errors stay
pyarrow's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa

_NUMPY = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_MAX_OFFSET = 2**31 - 1  # string and list offsets are int32


class _Fallback(Exception):
    """A value this module does not convert itself: pyarrow's own conversion takes the column."""


def column(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    """``pa.array(values, type)`` for the catalog's types, built without importing pandas."""
    values = values if isinstance(values, list) else list(values)
    try:
        if type in _NUMPY:
            return _numbers(values, type)
        if pa.types.is_string(type):
            return _strings(values)
        if pa.types.is_boolean(type):
            return _booleans(values)
        if pa.types.is_timestamp(type) and type.unit == "us":
            return _timestamps(values, type)
        if pa.types.is_list(type) and pa.types.is_string(type.value_type):
            return _string_lists(values, type)
    except _Fallback:
        pass
    return pa.array(values, type)


def table(columns: Mapping[str, Sequence[Any]], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from one value list per field (a missing field: all nulls)."""
    rows = len(next(iter(columns.values()))) if columns else 0
    arrays = [column(columns[f.name], f.type) if f.name in columns else pa.nulls(rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def table_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """``pa.Table.from_pylist(rows, schema=schema)`` without importing pandas."""
    return table({f.name: [row.get(f.name) for row in rows] for f in schema}, schema)


def _validity(values: list[Any]) -> tuple[pa.Buffer | None, int]:
    present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    nulls = len(values) - int(np.count_nonzero(present))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(present, bitorder="little")), nulls


def _numbers(values: list[Any], type: pa.DataType) -> pa.Array:
    kind = _NUMPY[type]
    # Exact classes: bool is an int to Python but not to pyarrow; numpy scalars, floats in an
    # integer column and the rest keep pyarrow's own rules.
    allowed = (int, float) if pa.types.is_floating(type) else (int,)
    if any(v is not None and v.__class__ not in allowed for v in values):
        raise _Fallback
    valid, nulls = _validity(values)
    try:
        data = np.array([0 if v is None else v for v in values], dtype=kind)
    except OverflowError:
        raise _Fallback from None
    return pa.Array.from_buffers(type, len(values), [valid, pa.py_buffer(data)], null_count=nulls)


def _booleans(values: list[Any]) -> pa.Array:
    if any(v is not None and v.__class__ is not bool for v in values):
        raise _Fallback
    valid, nulls = _validity(values)
    bits = np.packbits(np.fromiter((v is True for v in values), dtype=bool, count=len(values)), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [valid, pa.py_buffer(bits)], null_count=nulls)


def _encoded(values: list[Any]) -> tuple[np.ndarray, bytes]:
    """int32 offsets and the UTF-8 bytes of ``values`` (None as empty)."""
    parts = []
    for v in values:
        if v is None:
            parts.append(b"")
        elif v.__class__ is str:
            parts.append(v.encode("utf-8"))
        else:
            raise _Fallback
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=offsets[1:])
    if offsets[-1] > _MAX_OFFSET:
        raise _Fallback  # pyarrow splits it into chunks
    return offsets.astype(np.int32), b"".join(parts)


def _strings(values: list[Any]) -> pa.Array:
    valid, nulls = _validity(values)
    offsets, data = _encoded(values)
    buffers = [valid, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.string(), len(values), buffers, null_count=nulls)


def _timestamps(values: list[Any], type: pa.DataType) -> pa.Array:
    micros = []
    for v in values:
        if v is None:
            micros.append(0)
        elif isinstance(v, datetime):
            # pyarrow stores an aware datetime at its UTC instant and a naive one as it reads
            if v.tzinfo is not None:
                v = v.astimezone(timezone.utc).replace(tzinfo=None)
            micros.append((v - _EPOCH) // _MICROSECOND)
        else:
            raise _Fallback
    valid, nulls = _validity(values)
    data = np.array(micros, dtype=np.int64)
    return pa.Array.from_buffers(type, len(values), [valid, pa.py_buffer(data)], null_count=nulls)


def _string_lists(values: list[Any], type: pa.DataType) -> pa.Array:
    flat: list[Any] = []
    lengths = []
    for v in values:
        if v is None:
            lengths.append(0)
        elif isinstance(v, (list, tuple)):
            flat.extend(v)
            lengths.append(len(v))
        else:
            raise _Fallback
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(np.array(lengths, dtype=np.int64), out=offsets[1:])
    if offsets[-1] > _MAX_OFFSET:
        raise _Fallback
    valid, nulls = _validity(values)
    child = _strings(flat)
    if not type.value_field.nullable and child.null_count:
        raise _Fallback
    return pa.Array.from_buffers(
        type, len(values), [valid, pa.py_buffer(offsets.astype(np.int32))], null_count=nulls, children=[child]
    )
