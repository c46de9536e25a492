"""ImageFolder: ``dest/<class>/<fingerprint>.png`` plus ``dest/metadata.csv``.

The layout torchvision's ``ImageFolder`` (and most training code) reads: one folder per class.
``metadata.csv`` carries each image's provenance; ``file_name`` is relative to ``dest``.
"""

from __future__ import annotations

from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.export.common import COLUMNS, ExportResult, Selection, csv_bytes, write_class_folders
from diffspec.spec.loader import LoadedSpec

METADATA = "metadata.csv"


def write(loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, *, link: bool) -> ExportResult:
    return write_class_folders(
        selection,
        dest,
        "imagefolder",
        link,
        prefix="",
        metadata=METADATA,
        encode=lambda records: csv_bytes(("file_name", *COLUMNS), records),
    )
