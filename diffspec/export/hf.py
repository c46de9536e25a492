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
from diffspec.export.common import ExportResult, Selection, jsonl_bytes, write_class_folders
from diffspec.spec.loader import LoadedSpec

SPLIT = "train"
METADATA = "metadata.jsonl"


def write(loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, *, link: bool) -> ExportResult:
    return write_class_folders(selection, dest, "hf", link, prefix=f"{SPLIT}/", metadata=METADATA, encode=jsonl_bytes)
