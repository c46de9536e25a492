"""Hugging Face ``datasets`` ImageFolder layout: ``dest/train/<class>/<fingerprint>.png`` and
``dest/train/metadata.jsonl``.

``datasets.load_dataset("imagefolder", data_dir=dest)`` reads it as a ``train`` split. With a
metadata file present the loader does not infer labels from folder names, so the class is a
column (``class``) next to the other provenance; ``file_name`` is relative to the folder that
holds ``metadata.jsonl``, as the loader resolves it.
"""

from __future__ import annotations

from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.export.common import DestWriter, ExportResult, Selection, counts_by_class, jsonl_bytes
from diffspec.spec.loader import LoadedSpec

SPLIT = "train"
METADATA = "metadata.jsonl"


def write(loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, *, link: bool) -> ExportResult:
    out = DestWriter(dest, "hf", link)
    records = []
    for row in selection.rows:
        rel = f"{row.class_name}/{row.fingerprint}{row.suffix}"
        out.place(row.source, f"{SPLIT}/{rel}", row.sha256)
        records.append({"file_name": rel, **row.provenance()})
    out.write_bytes(f"{SPLIT}/{METADATA}", jsonl_bytes(records))
    stats = out.finish()
    return ExportResult(dest, "hf", counts_by_class(selection.classes, selection.rows), **stats)
