"""Export the catalog's images in a layout training code reads.

    from diffspec import Project
    result = Project("specs/quickstart.yaml").export("imagefolder", "exports/digits")
    result.counts   # {"zero": 30, ...}
    Project("specs/fruit.yaml").export("coco", "exports/fruit", split=Split(val=0.1))

Formats (one small module each; docs/export.md has every layout):

- ``imagefolder``: ``dest/<class>/<fingerprint>.png`` and ``dest/metadata.csv``; with ``merge``
  into an existing dataset folder, beside its files, with ``dest/diffspec-metadata.csv``
- ``hf``: Hugging Face ``datasets`` ImageFolder, ``dest/<split>/<class>/...`` and a
  ``metadata.parquet`` per split whose ``label`` is a ``ClassLabel`` of the spec's classes
- ``csv``: one CSV of absolute image paths and provenance (``dest`` is the file)
- ``yolo``: ``images/<split>/``, ``labels/<split>/``, ``data.yaml`` and ``classes.txt`` from the segment stage
- ``coco``: ``<split>/`` and ``annotations/instances_<split>.json`` (RLE masks) from the segment stage
- ``captions``: ``images/`` and ``synthetic_captions.csv`` (image file, caption) from the captions stage
- ``captions-txt``: ``1_<class>/<fingerprint>.png`` beside ``<fingerprint>.txt`` holding its prompt

``split`` (yolo, hf, coco) holds images out for validation and test by fingerprint
(:mod:`diffspec.export.split`). Images the spec no longer asks for are left out, and so are
rejected images unless ``include_rejected``. See :mod:`diffspec.export.dest` for how files are
written and which files are never touched.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.errors import ExportError
from diffspec.export.common import ExportOptions, ExportResult, check_dest, select
from diffspec.export.split import Split, as_split
from diffspec.spec.loader import LoadedSpec

# Format name -> module with `write(loaded, catalog, selection, dest, options) -> ExportResult`.
WRITERS = {
    "imagefolder": "diffspec.export.imagefolder",
    "yolo": "diffspec.export.yolo",
    "hf": "diffspec.export.hf",
    "coco": "diffspec.export.coco",
    "csv": "diffspec.export.csvfile",
    "captions": "diffspec.export.captions",
    "captions-txt": "diffspec.export.captions_txt",
}
FORMATS = tuple(WRITERS)
# The formats whose consumers know held-out splits; the others have no place for one.
SPLIT_FORMATS = ("yolo", "hf", "coco")
MERGE_FORMATS = ("imagefolder",)

__all__ = ["FORMATS", "ExportOptions", "ExportResult", "Split", "export"]


def export(
    loaded: LoadedSpec,
    catalog: Catalog,
    fmt: str,
    dest: Path,
    *,
    link: bool = True,
    include_rejected: bool = False,
    split: Split | float | None = None,
    merge: bool = False,
) -> ExportResult:
    """Write the catalog's live images to ``dest`` as ``fmt``; returns what was written.

    ``link``: hard-link images from the output root when on the same filesystem (else copy).
    ``split``: a :class:`Split` (or a validation fraction) for yolo, hf and coco. ``merge``:
    add an imagefolder export to an existing dataset folder. The result's ``path`` is the
    folder written (the CSV file for ``csv``); ``os.fspath(result)`` gives it too.
    """
    if fmt not in WRITERS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    options = ExportOptions(link=link, split=as_split(split), merge=merge)
    if options.split is not None and fmt not in SPLIT_FORMATS:
        raise ExportError(
            f"--format {fmt} has no train/val/test layout; a split applies to {', '.join(SPLIT_FORMATS)} only"
        )
    if merge and fmt not in MERGE_FORMATS:
        raise ExportError(f"--merge adds to an existing dataset folder with --format imagefolder only, not {fmt}")
    writer = importlib.import_module(WRITERS[fmt])
    dest = Path(dest)
    check_dest(writer.target_file(dest) if fmt == "csv" else dest, catalog.output)
    selection = select(loaded, catalog, include_rejected=include_rejected)
    result: ExportResult = writer.write(loaded, catalog, selection, dest, options)
    return replace(result, skipped_rejected=selection.skipped_rejected, skipped_obsolete=selection.skipped_obsolete)
