"""Export the catalog's images in a layout training code reads.

    from diffspec import Project
    result = Project("specs/quickstart.yaml").export("imagefolder", "exports/digits")
    result.counts   # {"zero": 30, ...}

Formats (one small module each):

- ``imagefolder``: ``dest/<class>/<fingerprint>.png`` and ``dest/metadata.csv``
- ``hf``: Hugging Face ``datasets`` ImageFolder, ``dest/train/<class>/...`` and ``dest/train/metadata.jsonl``
- ``csv``: one CSV of absolute image paths and provenance (``dest`` is the file)
- ``yolo``: ``images/``, ``labels/``, ``data.yaml`` and ``classes.txt`` from the segment stage's output
- ``captions``: ``images/`` and ``synthetic_captions.csv`` (image file, caption) from the captions stage

Images the spec no longer asks for are left out, and so are images a filter rejected unless
``include_rejected``. See :mod:`diffspec.export.common` for how files are written.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.errors import ExportError
from diffspec.export.common import ExportResult, check_dest, select
from diffspec.spec.loader import LoadedSpec

# Format name -> module with `write(loaded, catalog, selection, dest, *, link) -> ExportResult`.
WRITERS = {
    "imagefolder": "diffspec.export.imagefolder",
    "yolo": "diffspec.export.yolo",
    "hf": "diffspec.export.hf",
    "csv": "diffspec.export.csvfile",
    "captions": "diffspec.export.captions",
}
FORMATS = tuple(WRITERS)

__all__ = ["FORMATS", "ExportResult", "export"]


def export(
    loaded: LoadedSpec, catalog: Catalog, fmt: str, dest: Path, *, link: bool = True, include_rejected: bool = False
) -> ExportResult:
    """Write the catalog's live images to ``dest`` as ``fmt``; returns what was written.

    ``link``: hard-link images from the output root when on the same filesystem (else copy).
    The result's ``path`` is the folder written (the CSV file for ``csv``); ``os.fspath(result)``
    gives it too.
    """
    if fmt not in WRITERS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    writer = importlib.import_module(WRITERS[fmt])
    dest = Path(dest)
    check_dest(writer.target_file(dest) if fmt == "csv" else dest, catalog.output)
    selection = select(loaded, catalog, include_rejected=include_rejected)
    result: ExportResult = writer.write(loaded, catalog, selection, dest, link=link)
    return replace(result, skipped_rejected=selection.skipped_rejected, skipped_obsolete=selection.skipped_obsolete)
