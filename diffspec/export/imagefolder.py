"""ImageFolder: ``dest/<class>/<fingerprint>.png`` plus ``dest/metadata.csv``.

The layout torchvision's ``ImageFolder`` (and most training code) reads: one folder per class.
``metadata.csv`` carries each image's provenance; ``file_name`` is relative to ``dest``.

With ``merge`` (the pizza seed's "integrate"), ``dest`` is an existing dataset folder with
files of its own: ours go into its class folders beside theirs, nothing of theirs is
overwritten or deleted (:mod:`diffspec.export.dest`), and our metadata goes to
``diffspec-metadata.csv`` so that a ``metadata.csv`` of theirs stays as it is.
"""

from __future__ import annotations

from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.export.common import COLUMNS, ExportOptions, ExportResult, Selection, counts_by_class, csv_bytes
from diffspec.export.dest import DestWriter
from diffspec.spec.loader import LoadedSpec

METADATA = "metadata.csv"
MERGED_METADATA = "diffspec-metadata.csv"


def write(
    loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, options: ExportOptions
) -> ExportResult:
    out = DestWriter(dest, "imagefolder", options.link, merge=options.merge)
    records = []
    for row in selection.rows:
        rel = f"{row.class_name}/{row.fingerprint}{row.suffix}"
        out.place(row.source, rel, row.sha256)
        records.append({"file_name": rel, **row.provenance()})
    out.write_bytes(MERGED_METADATA if options.merge else METADATA, csv_bytes(("file_name", *COLUMNS), records))
    stats = out.finish()
    return ExportResult(dest, "imagefolder", counts_by_class(selection.classes, selection.rows), **stats)
