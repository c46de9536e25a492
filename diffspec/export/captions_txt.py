"""Captions as text files: ``dest/1_<class>/<fingerprint>.png`` beside ``<fingerprint>.txt``.

The layout LoRA and DreamBooth fine-tuning scripts read captions from: each image with a
same-name ``.txt`` holding its caption. The caption is the prompt the image was made from,
as words: A1111 weighting brackets and escapes resolved (``a (burnt:1.3) pizza`` gives ``a burnt
pizza``; trainers read captions as plain text), runs of whitespace made one space, and no line
end (some readers keep it); an image made from the captions stage was made from a prompt that
holds its caption, so that is its caption here too.

The folders are named ``<repeats>_<class>`` with 1 repeat because kohya's sd-scripts (its
DreamBooth-style dataset: ``--train_data_dir DEST --caption_extension .txt``) only reads
folders named so and skips others; rename a folder to repeat a class more often. Trainers that
walk a folder for image and ``.txt`` pairs read it as it is. (diffusers' ``train_dreambooth_lora``
takes one instance prompt and no caption files; for diffusers' text-to-image LoRA script use
``--format hf`` with ``--caption_column prompt``.)
"""

from __future__ import annotations

from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.errors import GenerationError
from diffspec.export.common import ExportOptions, ExportResult, Selection, counts_by_class
from diffspec.export.dest import DestWriter
from diffspec.spec.loader import LoadedSpec

REPEATS = 1


def class_folder(class_name: str) -> str:
    return f"{REPEATS}_{class_name}"


def caption_text(prompt: str) -> str:
    """The words of a prompt, without its weighting syntax."""
    from diffspec.generate.prompts import parse_a1111, unescape

    try:
        words = "".join(text for text, _ in parse_a1111(prompt))
    except GenerationError:  # brackets that never were weighting (a family without it): literal
        words = unescape(prompt)
    return " ".join(words.split())


def write(
    loaded: LoadedSpec, catalog: Catalog, selection: Selection, dest: Path, options: ExportOptions
) -> ExportResult:
    del loaded, catalog
    out = DestWriter(dest, "captions-txt", options.link)
    exported = []
    for row in selection.rows:
        caption = caption_text(row.prompt or "")
        if not caption:
            continue  # an image without a prompt (adopted from elsewhere) has no caption to give
        base = f"{class_folder(row.class_name)}/{row.fingerprint}"
        out.place(row.source, f"{base}{row.suffix}", row.sha256)
        out.write_bytes(f"{base}.txt", caption.encode("utf-8"))
        exported.append(row)
    stats = out.finish()
    left = len(selection.rows) - len(exported)
    notes = (
        (f"{left} image{'s' if left != 1 else ''} without a prompt {'were' if left != 1 else 'was'} left out",)
        if left
        else ()
    )
    return ExportResult(
        dest,
        "captions-txt",
        counts_by_class(selection.classes, exported),
        skipped_unlabelled=left,
        notes=notes,
        **stats,
    )
