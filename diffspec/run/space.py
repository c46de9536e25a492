"""Disk space for a run: how much the images still to make need, and what a full disk means.

A full disk is not a bug: the run stops, everything recorded stays whole (files are renamed
into place only when complete, rows are written only after their files), temp files are
removed, and the message says where and how much space to free; the next `apply` goes on.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Sequence
from pathlib import Path

from diffspec.catalog.store import Catalog
from diffspec.plan.unit import WorkUnit

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException | None) -> bool:
    """True if ``exc`` (or what caused it) is a no-space or over-quota error."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def full_path(exc: BaseException | None) -> Path | None:
    """The file whose write found the disk full, if the error says."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS and exc.filename:
            return Path(str(exc.filename))
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def bytes_per_image(catalog: Catalog) -> dict[tuple[int, int], float]:
    """Mean PNG size the catalog recorded, per (width, height)."""
    if not catalog.exists():
        return {}
    try:
        table = catalog.read_table("images", ["width", "height", "bytes"])
    except Exception:  # an estimate must never stop a run
        return {}
    if table.num_rows == 0:
        return {}
    grouped = table.group_by(["width", "height"]).aggregate([("bytes", "mean")])
    return {(r["width"], r["height"]): float(r["bytes_mean"]) for r in grouped.to_pylist() if r["bytes_mean"]}


def estimate_bytes(units: Sequence[WorkUnit], known: dict[tuple[int, int], float]) -> int:
    """Space the PNGs of ``units`` will take: the catalog's mean size for their image size, else
    the raw RGB size (PNG of generated images rarely compresses below half of it), plus the
    catalog's share (about 1 KB of provenance per image)."""
    total = 0.0
    for unit in units:
        size = (unit.key.width, unit.key.height)
        total += known.get(size, unit.key.width * unit.key.height * 3) + 1024
    return int(total)


def free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
