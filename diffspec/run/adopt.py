"""Adopt images a killed run wrote but never recorded.

A run records a batch's rows only after the batch's files are durable, so a kill between the
two leaves whole PNG files without a row; without this step the next run would make them
again. A file is adopted only if it is a complete PNG (it ends with IEND and decodes: a file
torn by a power cut does not), its provenance names the unit's fingerprint and its size is the
unit's. Adopted files are made durable, then recorded with their timing unknown (null
``seconds`` and ``batch_size``), exactly as their own run would have recorded them otherwise.
Anything else is left alone: the run makes that unit and replaces the file atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diffspec.atomic import make_durable
from diffspec.catalog.records import ImageRecord
from diffspec.plan.unit import WorkUnit
from diffspec.run.writer import ImageWriter, Written, check_inside

PNG_END = b"IEND\xaeB`\x82"


def _provenance(data: bytes, unit: WorkUnit) -> dict[str, str] | None:
    """The PNG's text chunks if ``data`` is a whole image of ``unit``; None otherwise."""
    if not data.endswith(PNG_END):
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decompresses every pixel: a truncated or corrupt stream raises
            text = dict(getattr(image, "text", {}) or {})
            size = image.size
    except Exception:  # noqa: BLE001 - any decoding problem means "not a whole image"
        return None
    if text.get("fingerprint") != unit.fingerprint or size != (unit.key.width, unit.key.height):
        return None
    return text


def adopt_orphans(
    units: Sequence[WorkUnit], output: Path, writer: ImageWriter, record: Callable[[list[ImageRecord]], Any]
) -> set[str]:
    """Record the whole images of ``units`` already on disk; returns their fingerprints."""
    by_folder: dict[str, list[WorkUnit]] = defaultdict(list)
    for unit in units:
        by_folder[unit.relpath.rpartition("/")[0]].append(unit)
    found: list[tuple[WorkUnit, Path]] = []
    for folder, group in by_folder.items():
        path = check_inside(output, folder)
        try:
            names = {entry.name for entry in os.scandir(path) if entry.is_file(follow_symlinks=False)}
        except (FileNotFoundError, NotADirectoryError):
            continue
        for unit in group:
            name = unit.relpath.rpartition("/")[2]
            if name in names:
                found.append((unit, path / name))
    adopted: list[tuple[WorkUnit, Path, bytes, dict[str, str]]] = []
    for unit, path in found:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        meta = _provenance(data, unit)
        if meta is not None:
            adopted.append((unit, path, data, meta))
    if not adopted:
        return set()
    make_durable([path for _, path, _, _ in adopted])
    configs: dict[Any, dict[str, Any]] = {}
    for unit, _, _, meta in adopted:
        try:
            configs.setdefault(unit.key, json.loads(meta.get("scheduler_config") or "{}"))
        except ValueError:
            configs.setdefault(unit.key, {})
    written = [Written(unit, unit.relpath, hashlib.sha256(data).hexdigest(), len(data)) for unit, _, data, _ in adopted]
    record(writer.records(written, {}, {}, configs, timed=False))
    return {unit.fingerprint for unit, _, _, _ in adopted}
