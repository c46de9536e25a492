"""Captions (the food seed's ``synthetic_captions.csv``): ``images/<fingerprint>.png`` and one CSV
row per image made from a caption: the image file and its caption, with the caption's source
text and class.

An image's caption is the one of its class's captions (``catalog/stages/captions/``) that its
prompt holds (the class's template with ``{caption}`` filled in, brackets escaped); images of
classes that take no captions are left out and counted.
"""

from __future__ import annotations

from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.errors import ExportError
from diffspec.export.common import ExportOptions, ExportResult, Selection, counts_by_class, csv_bytes
from diffspec.export.dest import DestWriter
from diffspec.plan.stages import CAPTIONS_STAGE, literal_prompt_text
from diffspec.spec.loader import LoadedSpec

CSV_NAME = "synthetic_captions.csv"
HEADER = ("image_file", "caption", "class", "source_text", "prompt")


def _captions_by_class(catalog: Catalog) -> dict[str, list[tuple[str, str]]]:
    """Per class: (caption text, source text), longest caption first (so a caption that holds
    another one as a substring is matched first)."""
    table = catalog.read_table(CAPTIONS_STAGE, ["class_name", "text", "source_text"])
    out: dict[str, list[tuple[str, str]]] = {}
    for cls, text, source in zip(*(table.column(c).to_pylist() for c in ("class_name", "text", "source_text"))):
        if text and (text, source) not in out.setdefault(cls, []):
            out[cls].append((text, source))
    for items in out.values():
        items.sort(key=lambda item: -len(item[0]))
    return out


def write(
    loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, options: ExportOptions
) -> ExportResult:
    if not catalog.parts(CAPTIONS_STAGE):
        raise ExportError(
            f"the catalog of {loaded.path} holds no captions: add `stages: {{captions: ...}}` and a class prompt "
            "with {caption} to the spec, and run `diffspec apply`"
        )
    captions = _captions_by_class(catalog)
    out = DestWriter(dest, "captions", options.link)
    records, exported = [], []
    for row in selection.rows:
        prompt = row.prompt or ""
        found = next(
            (
                (text, source)
                for text, source in captions.get(row.class_name, [])
                if literal_prompt_text(text) in prompt
            ),
            None,
        )
        if found is None:
            continue
        name = f"images/{row.fingerprint}{row.suffix}"
        out.place(row.source, name, row.sha256)
        records.append(
            {
                "image_file": name,
                "caption": found[0],
                "class": row.class_name,
                "source_text": found[1],
                "prompt": prompt,
            }
        )
        exported.append(row)
    out.write_bytes(CSV_NAME, csv_bytes(HEADER, records))
    stats = out.finish()
    left = len(selection.rows) - len(exported)
    notes = (f"{left} images were not made from a caption and were left out",) if left else ()
    return ExportResult(
        dest, "captions", counts_by_class(selection.classes, exported), skipped_unlabelled=left, notes=notes, **stats
    )
