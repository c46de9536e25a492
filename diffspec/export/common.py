"""What every export format shares: which images go out, and how files land under ``dest``.

Selection: the catalog's live images (first row per fingerprint, tombstones dropped) that the
spec still asks for (not in the plan's ``remove`` list, class still in the spec), without the
images that are rejected (a person's review decision, else the latest verdict of any filter;
see :mod:`diffspec.catalog.verdicts`), unless asked to include them.

Writing: every file goes under ``dest`` (checked after resolving symlinks), atomically (temp
file in the same folder, then rename). Images are hard-linked from the output root when asked
and possible (same filesystem), else copied. A file that already matches is left alone, so a
second export into the same ``dest`` rewrites nothing. ``dest/.diffspec-export.json`` lists the
files the last export wrote; files it listed that this export no longer writes (an image since
rejected or pruned) are deleted, and nothing else ever is.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffspec.atomic import TMP_MARKER, atomic_write, atomic_write_bytes, fsync_dir, remove_leftovers
from diffspec.catalog.store import CATALOG_DIR, Catalog
from diffspec.catalog.verdicts import rejected_fingerprints
from diffspec.errors import ExportError
from diffspec.spec.loader import LoadedSpec
from diffspec.spec.model import NAME_PATTERN

MANIFEST = ".diffspec-export.json"

# Provenance columns every format writes, in this order, after its own file column.
COLUMNS = (
    "class",
    "label",
    "prompt",
    "negative_prompt",
    "seed",
    "model_source",
    "model_revision",
    "scheduler",
    "steps",
    "guidance",
    "width",
    "height",
    "fingerprint",
    "sha256",
    "rejected",
)
_CATALOG_COLUMNS = [
    "fingerprint",
    "class_name",
    "label",
    "unit_index",
    "prompt",
    "negative_prompt",
    "seed",
    "model_source",
    "model_revision",
    "scheduler",
    "steps",
    "guidance",
    "width",
    "height",
    "path",
    "sha256",
    "bytes",
]
# errno values that mean "this filesystem cannot hard-link here": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


@dataclass(frozen=True)
class ExportRow:
    """One image to export: its provenance and where its file is."""

    fingerprint: str
    class_name: str
    label: str | None
    prompt: str | None
    negative_prompt: str | None
    seed: int | None
    model_source: str | None
    model_revision: str | None
    scheduler: str | None
    steps: int | None
    guidance: float | None
    width: int | None
    height: int | None
    sha256: str | None
    source: Path  # absolute, inside the output root
    rejected: bool

    @property
    def suffix(self) -> str:
        return self.source.suffix or ".png"

    def provenance(self) -> dict[str, Any]:
        values = {"class": self.class_name, **{c: getattr(self, c) for c in COLUMNS if c != "class"}}
        return {c: values[c] for c in COLUMNS}


@dataclass(frozen=True)
class Selection:
    rows: tuple[ExportRow, ...]
    classes: tuple[str, ...]  # the spec's classes, in the spec's order
    skipped_rejected: int
    skipped_obsolete: int


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote. ``os.fspath(result)`` is the export's path (folder, or CSV file)."""

    path: Path
    format: str
    counts: dict[str, int]  # exported images per class, in the spec's class order
    linked: int = 0
    copied: int = 0
    unchanged: int = 0
    removed: int = 0  # files a previous export into this dest wrote that this one no longer does
    skipped_rejected: int = 0
    skipped_obsolete: int = 0
    skipped_unlabelled: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __fspath__(self) -> str:
        return str(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "total": self.total,
            "counts": dict(self.counts),
            "linked": self.linked,
            "copied": self.copied,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": {
                "rejected": self.skipped_rejected,
                "obsolete": self.skipped_obsolete,
                "unlabelled": self.skipped_unlabelled,
            },
            "notes": list(self.notes),
        }


# ---- paths ------------------------------------------------------------------------------
def inside(root: Path, relpath: str | Path, what: str = "write") -> Path:
    """``root / relpath`` resolved, refusing anything that escapes ``root`` (or is ``root``)."""
    base = Path(root).resolve()
    target = (base / relpath).resolve()
    if not target.is_relative_to(base) or target == base:
        raise ExportError(f"refusing to {what} {str(relpath)!r}: it resolves to {target}, outside {base}")
    return target


def safe_name(name: str) -> str:
    """A class name as a folder name: the spec validates this already; check again before writing."""
    import re

    if not re.match(NAME_PATTERN, name) or name in (".", "..") or "/" in name or "\\" in name:
        raise ExportError(f"class name {name!r} cannot be used as a folder name")
    return name


def check_dest(dest: Path, output: Path) -> None:
    """Refuse a destination that overlaps the output root's own files."""
    d, o = dest.resolve(), output.resolve()
    if d == o or o.is_relative_to(d):
        raise ExportError(
            f"the export destination {dest} must not be or contain the output root {o}; "
            "choose a folder of its own (e.g. a new folder next to the output root)"
        )
    for own in (CATALOG_DIR, "images"):
        if d.is_relative_to(o / own):
            raise ExportError(
                f"the export destination {dest} is inside the output root's {own}/ folder; choose another folder"
            )


# ---- selection --------------------------------------------------------------------------
def select(loaded: LoadedSpec, catalog: Catalog, include_rejected: bool = False) -> Selection:
    from diffspec.plan.diff import build_plan

    classes = tuple(loaded.classes)
    images = catalog.live_images(_CATALOG_COLUMNS) if catalog.exists() else None
    if images is None or images.num_rows == 0:
        raise ExportError(
            f"nothing to export: the catalog under {catalog.output} has no images yet; "
            f"run `diffspec apply {loaded.path}` first"
        )
    # What the spec no longer asks for (a lowered target, a removed class) stays out, as `gc` would.
    obsolete = {r.fingerprint for r in build_plan(loaded, catalog).removals}
    rejected = rejected_fingerprints(catalog)
    order = {name: i for i, name in enumerate(classes)}
    rows: list[tuple[tuple[int, int, str], ExportRow]] = []
    sizes: dict[str, int | None] = {}
    skipped_rejected = skipped_obsolete = 0
    for r in images.to_pylist():
        fp, cls = r["fingerprint"], r["class_name"]
        if fp in obsolete or cls not in order:
            skipped_obsolete += 1
            continue
        is_rejected = fp in rejected
        if is_rejected and not include_rejected:
            skipped_rejected += 1
            continue
        if not r["path"]:
            raise ExportError(f"catalog row {fp} (class {cls!r}) has no image path")
        source = inside(catalog.output, r["path"], what="read")
        row = ExportRow(
            fingerprint=fp,
            class_name=safe_name(cls),
            label=r["label"],
            prompt=r["prompt"],
            negative_prompt=r["negative_prompt"],
            seed=r["seed"],
            model_source=r["model_source"],
            model_revision=r["model_revision"],
            scheduler=r["scheduler"],
            steps=r["steps"],
            guidance=r["guidance"],
            width=r["width"],
            height=r["height"],
            sha256=r["sha256"],
            source=source,
            rejected=is_rejected,
        )
        sizes[fp] = r["bytes"]
        rows.append(((order[cls], r["unit_index"] if r["unit_index"] is not None else -1, fp), row))
    rows.sort(key=lambda item: item[0])
    selected = tuple(row for _, row in rows)
    missing = [row for row in selected if not row.source.is_file()]
    # A stat per image, no hashing: a file replaced by garbage or torn by a bad copy has another size.
    damaged = [
        row
        for row in selected
        if row not in missing
        and sizes.get(row.fingerprint) is not None
        and row.source.stat().st_size != sizes[row.fingerprint]
    ]
    if damaged:
        shown = ", ".join(str(m.source) for m in damaged[:3]) + (
            f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        )
        raise ExportError(
            f"{len(damaged)} catalog image{'s on disk differ' if len(damaged) != 1 else ' on disk differs'} from "
            f"{'their' if len(damaged) != 1 else 'its'} catalog row (another size): {shown}. Run `diffspec check {loaded.path} --repair` to set them "
            "aside so the next apply makes them again; nothing was exported"
        )
    if missing:
        shown = ", ".join(str(m.source) for m in missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise ExportError(
            f"{len(missing)} catalog image{'s are' if len(missing) != 1 else ' is'} missing on disk: {shown}. "
            f"Run `diffspec apply {loaded.path}` to make them again (`diffspec plan` shows what it would do); "
            "nothing was exported"
        )
    return Selection(selected, classes, skipped_rejected, skipped_obsolete)


def counts_by_class(classes: Sequence[str], rows: Iterable[ExportRow]) -> dict[str, int]:
    counts = dict.fromkeys(classes, 0)
    for row in rows:
        counts[row.class_name] = counts.get(row.class_name, 0) + 1
    return counts


# ---- tables -----------------------------------------------------------------------------
def csv_bytes(header: Sequence[str], records: Iterable[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(
            {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v) for k, v in rec.items()}
        )
    return buf.getvalue().encode("utf-8")


def jsonl_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode("utf-8")


# ---- files ------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DestWriter:
    """Writes files under one export folder and keeps its manifest."""

    def __init__(self, dest: Path, fmt: str, link: bool) -> None:
        self.dest = Path(dest)
        self.fmt = fmt
        self.link = link
        if self.dest.exists() and not self.dest.is_dir():
            raise ExportError(f"the export destination {self.dest} exists and is not a folder")
        self.dest.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.dest)  # temp files of an export that was killed
        self.previous = self._read_manifest()
        self.written: set[str] = set()
        self.stats = {"linked": 0, "copied": 0, "unchanged": 0, "removed": 0}
        self._linked_dirs: set[Path] = set()

    def _read_manifest(self) -> set[str]:
        try:
            data = json.loads((self.dest / MANIFEST).read_text(encoding="utf-8"))
            return {str(p) for p in data.get("files", [])}
        except (OSError, ValueError, AttributeError):
            return set()

    def _target(self, rel: str) -> Path:
        target = inside(self.dest, rel)
        self.written.add(Path(rel).as_posix())
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_bytes(self, rel: str, data: bytes) -> Path:
        target = self._target(rel)
        _write_if_changed(target, data)
        return target

    def place(self, source: Path, rel: str, sha256: str | None = None) -> Path:
        """Hard-link or copy ``source`` to ``dest/rel``; leave a matching file alone."""
        target = self._target(rel)
        src = source.stat()
        try:
            have = target.stat()
        except FileNotFoundError:
            have = None
        if have is not None:
            same_inode = (have.st_ino, have.st_dev) == (src.st_ino, src.st_dev)
            if same_inode and self.link:
                self.stats["unchanged"] += 1
                return target
            matches = not same_inode and have.st_size == src.st_size and _sha256(target) == (sha256 or _sha256(source))
            if matches:
                # A matching copy: keep it, unless a link was asked for and this filesystem can make one.
                linked = self.link and self._try_link(source, target)
                self.stats["linked" if linked else "unchanged"] += 1
                return target
        if self.link and self._try_link(source, target):
            self.stats["linked"] += 1
            return target
        atomic_write(target, lambda fh: _copy_into(source, fh))
        self.stats["copied"] += 1
        return target

    def _try_link(self, source: Path, target: Path) -> bool:
        tmp = target.parent / f".{target.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno in _NO_LINK:
                return False
            raise ExportError(f"cannot link {source} to {target}: {exc}") from exc
        try:
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._linked_dirs.add(target.parent)
        return True

    def finish(self) -> dict[str, int]:
        """Delete what the previous export here wrote and this one did not; save the manifest."""
        for folder in self._linked_dirs:
            fsync_dir(folder)
        for rel in sorted(self.previous - self.written):
            try:
                stale = inside(self.dest, rel, what="delete")
            except ExportError:
                continue  # a manifest edited to point elsewhere: never delete outside dest
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
                self.stats["removed"] += 1
                self._prune_empty(stale.parent)
        manifest = {"format": self.fmt, "files": sorted(self.written)}
        _write_if_changed(self.dest / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        return dict(self.stats)

    def _prune_empty(self, folder: Path) -> None:
        base = self.dest.resolve()
        while folder != base and folder.is_relative_to(base):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _write_if_changed(target: Path, data: bytes) -> None:
    try:
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(target, data)


def _copy_into(source: Path, fh: Any) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, fh, 1 << 20)


def write_class_folders(
    selection: Selection,
    dest: Path,
    fmt: str,
    link: bool,
    *,
    prefix: str,
    metadata: str,
    encode: Callable[[list[dict[str, Any]]], bytes],
) -> ExportResult:
    """The one-folder-per-class layouts: ``dest/<prefix><class>/<fingerprint>.png`` and a
    metadata file beside the class folders whose ``file_name`` is relative to that file."""
    out = DestWriter(dest, fmt, link)
    records = []
    for row in selection.rows:
        rel = f"{row.class_name}/{row.fingerprint}{row.suffix}"
        out.place(row.source, f"{prefix}{rel}", row.sha256)
        records.append({"file_name": rel, **row.provenance()})
    out.write_bytes(f"{prefix}{metadata}", encode(records))
    stats = out.finish()
    return ExportResult(dest, fmt, counts_by_class(selection.classes, selection.rows), **stats)
