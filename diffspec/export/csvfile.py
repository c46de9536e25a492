"""CSV: one file listing every image by its absolute path in the output root, with provenance.

No image is copied. ``dest`` is the file to write; an existing folder gets ``images.csv``.
"""

from __future__ import annotations

from pathlib import Path

from diffspec.atomic import atomic_write_bytes
from diffspec.catalog.store import Catalog
from diffspec.export.common import COLUMNS, ExportOptions, ExportResult, Selection, counts_by_class, csv_bytes
from diffspec.spec.loader import LoadedSpec

DEFAULT_NAME = "images.csv"


def target_file(dest: Path) -> Path:
    return dest / DEFAULT_NAME if dest.is_dir() else dest


def write(
    loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, options: ExportOptions
) -> ExportResult:
    del loaded, catalog, options  # the CSV only points at the output root's files
    path = target_file(dest)
    records = [{"path": str(row.source), **row.provenance()} for row in selection.rows]
    atomic_write_bytes(path, csv_bytes(("path", *COLUMNS), records))
    return ExportResult(path, "csv", counts_by_class(selection.classes, selection.rows))
