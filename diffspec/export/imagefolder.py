"""ImageFolder: ``dest/<class>/<fingerprint>.png`` plus ``dest/metadata.csv``.

The layout torchvision's ``ImageFolder`` (and most training code) reads: one folder per class.
``metadata.csv`` carries each image's provenance; ``file_name`` is relative to ``dest``.
"""

from __future__ import annotations

from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.export.common import COLUMNS, DestWriter, ExportResult, Selection, counts_by_class, csv_bytes
from diffspec.spec.loader import LoadedSpec

METADATA = "metadata.csv"


def write(loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, *, link: bool) -> ExportResult:
    out = DestWriter(dest, "imagefolder", link)
    records = []
    for row in selection.rows:
        rel = f"{row.class_name}/{row.fingerprint}{row.suffix}"
        out.place(row.source, rel, row.sha256)
        records.append({"file_name": rel, **row.provenance()})
    out.write_bytes(METADATA, csv_bytes(("file_name", *COLUMNS), records))
    stats = out.finish()
    return ExportResult(dest, "imagefolder", counts_by_class(selection.classes, selection.rows), **stats)
