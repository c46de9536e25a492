"""Write generated images: deterministic PNG with provenance, atomic and durable, then a row.

Each image goes to ``<output>/images/<class>/<fingerprint>.png`` (``unit.relpath``) through
:func:`diffspec.atomic.atomic_write_many`, a batch at a time (temp files in the same folder,
fsync, rename, then each folder fsynced once). Only then are its catalog rows built, so a row
never points to a file that a crash could lose.

The PNG carries its provenance in tEXt chunks (iTXt when a value is not Latin-1): prompt,
negative prompt, seed, model source and revision, scheduler and its resolved config, steps,
guidance, size, fingerprint, diffspec version. The encoding is deterministic: same pixels,
same bytes (no timestamps, one filter, fixed compression level; :mod:`diffspec.run.png`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diffspec.atomic import atomic_write_many
from diffspec.catalog.records import ImageRecord
from diffspec.errors import DiffspecError
from diffspec.plan.unit import WorkUnit
from diffspec.run.png import encode_pixels

#: Set to a file path to make the writer append one line per image it writes (kill drills).
WRITE_COUNTER_ENV = "DIFFSPEC_WRITE_COUNTER"


def diffspec_version() -> str:
    try:
        from diffspec import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def check_inside(root: Path, relpath: str) -> Path:
    """``root / relpath`` resolved, refusing anything that escapes ``root``."""
    root = Path(root).resolve()
    target = (root / relpath).resolve()
    if not target.is_relative_to(root) or target == root:
        raise DiffspecError(f"refusing to write {relpath!r}: it resolves to {target}, outside the output root {root}")
    return target


def png_metadata(unit: WorkUnit, scheduler_config: dict[str, Any] | None) -> dict[str, str]:
    key = unit.key
    meta = {
        "prompt": unit.prompt,
        "negative_prompt": unit.negative,
        "seed": str(unit.seed),
        "model_source": key.model.source,
        "model_revision": key.model.revision or "",
        "mode": key.mode,
        "scheduler": key.scheduler,
        "scheduler_config": json.dumps(scheduler_config or {}, sort_keys=True, separators=(",", ":")),
        "steps": str(key.steps),
        "guidance": repr(float(key.guidance)),
        "width": str(key.width),
        "height": str(key.height),
        "fingerprint": unit.fingerprint,
        "diffspec_version": diffspec_version(),
    }
    if key.mode in ("img2img", "inpaint") and key.strength is not None:
        meta["strength"] = repr(float(key.strength))
    if unit.input_hash:
        meta["input_hash"] = unit.input_hash
    return meta


def encode_png(image: Any, meta: dict[str, str]) -> bytes:
    """PNG bytes of a PIL image with ``meta`` as text chunks. Deterministic (:mod:`diffspec.run.png`)."""
    import numpy as np

    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    return encode_pixels(np.asarray(image), meta)


def encode_items(
    items: Sequence[tuple[WorkUnit, Any]], scheduler_configs: dict[Any, dict[str, Any]]
) -> list[tuple[WorkUnit, bytes]]:
    """(unit, PIL image) pairs as (unit, PNG bytes with the unit's provenance)."""
    return [(unit, encode_png(image, png_metadata(unit, scheduler_configs.get(unit.key)))) for unit, image in items]


@dataclass(frozen=True)
class Written:
    unit: WorkUnit
    path: str  # relative to the output root
    sha256: str
    bytes: int


class ImageWriter:
    """Writes images of one run under one output root and builds their catalog rows."""

    def __init__(self, output: Path, run_id: str, dataset: str, labels: dict[str, str], device: str) -> None:
        self.output = Path(output)
        self.root = self.output.resolve()
        self.run_id = run_id
        self.dataset = dataset
        self.labels = labels
        self.device = device
        self._counter = os.environ.get(WRITE_COUNTER_ENV)

    def _count(self, units: Sequence[WorkUnit]) -> None:
        if not self._counter:
            return
        # Counted before writing, so a kill between the two over-counts, never under-counts.
        fd = os.open(self._counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(f"{u.fingerprint}\n" for u in units).encode())
        finally:
            os.close(fd)

    def write_files(
        self, items: Sequence[tuple[WorkUnit, Any]], scheduler_configs: dict[Any, dict[str, Any]]
    ) -> list[Written]:
        """Write (unit, PIL image) pairs; returns what was written, durable on return."""
        return self.write_encoded(encode_items(items, scheduler_configs))

    def write_encoded(self, items: Sequence[tuple[WorkUnit, bytes]]) -> list[Written]:
        """Write (unit, PNG bytes) pairs made by :func:`encode_items` (here, or on a Ray actor
        that sent them); returns what was written, durable on return."""
        self._count([u for u, _ in items])
        written: list[Written] = []
        files: list[tuple[Path, bytes]] = []
        folders: dict[str, Path] = {}
        for unit, data in items:
            target = self._target(unit.relpath, folders)
            files.append((target, data))
            written.append(Written(unit, unit.relpath, hashlib.sha256(data).hexdigest(), len(data)))
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write_many(files)
        return written

    def _target(self, relpath: str, folders: dict[str, Path]) -> Path:
        """Where ``relpath`` goes, confined under the output root: each folder is resolved
        once per batch (symlinks included), the file name must be a plain name."""
        folder, _, name = relpath.rpartition("/")
        if folder not in folders:
            folders[folder] = check_inside(self.root, folder)
        if not name or name in (".", "..") or "\\" in name:
            raise DiffspecError(f"refusing to write {relpath!r}: not a plain file name")
        return folders[folder] / name

    def records(
        self,
        written: Sequence[Written],
        seconds: dict[str, float],
        batch_sizes: dict[str, int],
        scheduler_configs: dict[Any, dict[str, Any]],
        dtype: str | None = None,
        timed: bool = True,
    ) -> list[ImageRecord]:
        """Catalog records of written images. ``timed=False``: the time and batch size are
        unknown (adopted images, whose own run died before recording them)."""
        now = datetime.now(timezone.utc)
        configs: dict[Any, str] = {}
        out = []
        for w in written:
            key = w.unit.key
            if key not in configs:
                configs[key] = json.dumps(scheduler_configs.get(key) or {}, sort_keys=True)
            out.append(
                image_record(
                    w.unit,
                    path=w.path,
                    sha256=w.sha256,
                    nbytes=w.bytes,
                    run_id=self.run_id,
                    dataset=self.dataset,
                    label=self.labels.get(w.unit.class_name, w.unit.class_name),
                    device=self.device,
                    dtype=dtype or key.model.dtype,
                    scheduler_config=configs[key],
                    created_at=now,
                    seconds=float(seconds.get(w.unit.fingerprint, 0.0)) if timed else None,
                    batch_size=int(batch_sizes.get(w.unit.fingerprint, 1)) if timed else None,
                )
            )
        return out


def image_record(
    unit: WorkUnit,
    *,
    path: str,
    sha256: str | None,
    nbytes: int | None,
    run_id: str | None,
    dataset: str | None,
    label: str | None,
    device: str | None = None,
    dtype: str | None = None,
    scheduler_config: str | None = None,
    created_at: datetime | None = None,
    seconds: float | None = None,
    batch_size: int | None = None,
) -> ImageRecord:
    """The catalog record of one image of ``unit``: the one place a unit becomes a row."""
    k = unit.key
    return ImageRecord(
        fingerprint=unit.fingerprint,
        class_name=unit.class_name,
        path=path,
        dataset=dataset,
        classes=tuple(unit.classes or (unit.class_name,)),
        label=label,
        unit_index=unit.index,
        seed=unit.seed,
        prompt=unit.prompt,
        negative_prompt=unit.negative,
        model_name=k.model.name,
        model_source=k.model.source,
        model_revision=k.model.revision,
        family=k.model.family,
        dtype=dtype,
        mode=k.mode,
        scheduler=k.scheduler,
        scheduler_config=scheduler_config,
        width=k.width,
        height=k.height,
        steps=k.steps,
        guidance=float(k.guidance),
        strength=k.strength,
        input_image=unit.input_image,
        input_hash=unit.input_hash,
        mask_hash=unit.mask_hash,
        sha256=sha256,
        bytes=nbytes,
        run_id=run_id,
        created_at=created_at,
        seconds=seconds,
        batch_size=batch_size,
        device=device,
        canonical=unit.canonical(),
    )
