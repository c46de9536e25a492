"""Hugging Face ``datasets`` ImageFolder layout: ``dest/<split>/<class>/<fingerprint>.png`` and
``dest/<split>/metadata.parquet``, split folders ``train/``, ``validation/`` and ``test/``.

``datasets.load_dataset("imagefolder", data_dir=dest)`` reads it with one split per folder. A
metadata file stops the loader from inferring labels from folder names, so the label is in
the metadata: ``label`` is a ``ClassLabel`` whose names are the spec's classes in the spec's
order (so its ids match the yolo and coco exports), declared in the Parquet schema's
``huggingface`` metadata, which is where ``datasets`` looks for features. Next to it: ``class``
(the name) and the provenance columns, the class's ``label`` text as ``label_text``.
``file_name`` is relative to the folder that holds ``metadata.parquet``, as the loader
resolves it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from diffspec.catalog.columns import table_from_rows
from diffspec.catalog.store import Catalog
from diffspec.export.common import (
    COLUMNS,
    ExportOptions,
    ExportResult,
    ExportRow,
    Selection,
    by_split,
    split_result,
)
from diffspec.export.dest import DestWriter
from diffspec.export.split import TEST, TRAIN, VAL
from diffspec.spec.loader import LoadedSpec

METADATA = "metadata.parquet"
# Our split names -> the folder names datasets' imagefolder maps to its train/validation/test splits.
FOLDERS = {TRAIN: "train", VAL: "validation", TEST: "test"}
_TYPES: dict[str, pa.DataType] = {
    "seed": pa.int64(),
    "steps": pa.int64(),
    "guidance": pa.float64(),
    "width": pa.int64(),
    "height": pa.int64(),
    "rejected": pa.bool_(),
}
# datasets' `Value` dtype names of those Arrow types.
_VALUE_DTYPES = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64", pa.bool_(): "bool"}
# Provenance columns as they appear here: `label` is the ClassLabel, the class's label text moves aside.
_PROVENANCE = tuple("label_text" if c == "label" else c for c in COLUMNS)


def _schema(classes: tuple[str, ...]) -> pa.Schema:
    fields = [pa.field("file_name", pa.string()), pa.field("label", pa.int64())]
    fields += [pa.field(name, _TYPES.get(name, pa.string())) for name in _PROVENANCE]
    features: dict[str, Any] = {f.name: {"dtype": _VALUE_DTYPES[f.type], "_type": "Value"} for f in fields}
    features["label"] = {"names": list(classes), "_type": "ClassLabel"}
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


def _record(row: ExportRow, label: int) -> dict[str, Any]:
    provenance = row.provenance()
    provenance["label_text"] = provenance.pop("label")
    return {"file_name": f"{row.class_name}/{row.fingerprint}{row.suffix}", "label": label, **provenance}


def parquet_bytes(records: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table_from_rows(records, schema), buf)
    return buf.getvalue()


def write(
    loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, options: ExportOptions
) -> ExportResult:
    ids = {name: i for i, name in enumerate(selection.classes)}
    schema = _schema(selection.classes)
    out = DestWriter(dest, "hf", options.link)
    groups = by_split(selection.rows, options.split)
    for split, rows in groups.items():
        if not rows and split != TRAIN:
            continue  # an empty folder would be a split of no rows; leave it out
        folder = FOLDERS[split]
        records = [_record(row, ids[row.class_name]) for row in rows]
        for row, rec in zip(rows, records):
            out.place(row.source, f"{folder}/{rec['file_name']}", row.sha256)
        out.write_bytes(f"{folder}/{METADATA}", parquet_bytes(records, schema))
    stats = out.finish()
    return split_result("hf", dest, selection, selection.rows, groups, options, stats)
