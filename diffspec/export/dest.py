"""How an export's files land under ``dest``, and which of them are ours.

A format queues its files (:meth:`DestWriter.place` for an image, :meth:`DestWriter.write_bytes`
for a label or metadata file); :meth:`DestWriter.finish` then checks everything before it
writes anything, writes, and deletes what an earlier export here wrote that this one no
longer does.

``dest/.diffspec-export.json`` (the manifest) lists the files diffspec wrote; every other file
under ``dest`` is someone else's, and no export ever overwrites or deletes one:

- a file of theirs at a path this export wants, with other bytes, stops the export before it
  writes anything (the error lists the paths); with the same bytes it is left as it is, and
  stays theirs (not claimed in the manifest);
- without ``merge``, ``dest`` must be empty or an earlier export's folder (it has a manifest):
  exporting into a folder of other files by mistake is refused; with ``merge`` (integrate into
  an existing dataset) ours are added beside theirs, and folders are never pruned.

Kill-safe: before the first write the manifest already lists every file this export may write
(the earlier export's and this one's), so a killed export's files are still ours next time;
after the writes and deletions it lists exactly this export's files. Every write is atomic
(temp file in the same folder, then rename); a file that already matches is left alone, so an
export repeated with nothing changed writes no byte, the manifest included.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffspec.atomic import TMP_MARKER, atomic_write, atomic_write_bytes, fsync_dir
from diffspec.errors import ExportError

MANIFEST = ".diffspec-export.json"
# errno values that mean "this filesystem cannot hard-link here": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}
# Only our own temp names (`.<name>.tmp-<pid>-<8 hex>`, diffspec.atomic) count as leftovers:
# a merge target may hold dot-files of its own.
_OUR_TMP = re.compile(r"^\..+" + re.escape(TMP_MARKER) + r"\d+-[0-9a-f]{8}$")


def inside(root: Path, relpath: str | Path, what: str = "write") -> Path:
    """``root / relpath`` resolved, refusing anything that escapes ``root`` (or is ``root``)."""
    base = Path(root).resolve()
    target = (base / relpath).resolve()
    if not target.is_relative_to(base) or target == base:
        raise ExportError(f"refusing to {what} {str(relpath)!r}: it resolves to {target}, outside {base}")
    return target


@dataclass(frozen=True, slots=True)
class _Image:
    source: Path
    sha256: str | None


@dataclass(frozen=True, slots=True)
class _Bytes:
    data: bytes


class DestWriter:
    """Queues the files of one export under ``dest``; :meth:`finish` writes them."""

    def __init__(self, dest: Path, fmt: str, link: bool, *, merge: bool = False) -> None:
        self.dest = Path(dest)
        self.fmt = fmt
        self.link = link
        self.merge = merge
        if self.dest.exists() and not self.dest.is_dir():
            raise ExportError(f"the export destination {self.dest} exists and is not a folder")
        self._queued: dict[str, _Image | _Bytes] = {}
        self.stats = {"linked": 0, "copied": 0, "unchanged": 0, "removed": 0}
        self._linked_dirs: set[Path] = set()

    # ---- queue --------------------------------------------------------------------------
    def place(self, source: Path, rel: str, sha256: str | None = None) -> None:
        """Hard-link or copy ``source`` to ``dest/rel`` (``sha256``: the source's, if known)."""
        self._queued[self._key(rel)] = _Image(Path(source), sha256)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._queued[self._key(rel)] = _Bytes(data)

    def _key(self, rel: str) -> str:
        inside(self.dest, rel)  # refuse an escaping path when it is queued, not halfway through
        return Path(rel).as_posix()

    # ---- write --------------------------------------------------------------------------
    def finish(self) -> dict[str, int]:
        """Check, write, delete what is no longer ours to keep, save the manifest; returns counts."""
        self.dest.mkdir(parents=True, exist_ok=True)
        _remove_our_leftovers(self.dest)  # temp files of an export that was killed
        manifest = self.dest / MANIFEST
        previous = _read_manifest(manifest)
        if previous is None and not self.merge:
            _refuse_foreign_folder(self.dest, self.fmt)
        ours = previous or set()
        theirs_same = self._check_collisions(ours)
        claimed = set(self._queued) - theirs_same
        self.stats["unchanged"] += len(theirs_same)
        # List what this export may write before writing it: a kill leaves nothing unowned.
        _write_if_changed(manifest, _manifest_bytes(self.fmt, ours | claimed))
        for rel in sorted(claimed):
            item = self._queued[rel]
            target = inside(self.dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(item, _Bytes):
                _write_if_changed(target, item.data)
            else:
                self._place(item, target)
        for folder in self._linked_dirs:
            fsync_dir(folder)
        for rel in sorted(ours - claimed - theirs_same):
            self._delete_ours(rel)
        _write_if_changed(manifest, _manifest_bytes(self.fmt, claimed))
        return dict(self.stats)

    def _check_collisions(self, ours: set[str]) -> set[str]:
        """Queued paths held by a file that is not ours: the same bytes are left alone (returned);
        anything else stops the export before any write."""
        same: set[str] = set()
        clashes: list[str] = []
        for rel, item in self._queued.items():
            if rel in ours:
                continue
            target = self.dest / rel
            if not (target.exists() or target.is_symlink()):
                continue
            if target.is_file() and not target.is_symlink() and _holds(target, item):
                same.add(rel)
            else:
                clashes.append(rel)
        if clashes:
            clashes.sort()
            shown = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
            raise ExportError(
                f"{len(clashes)} path{'s' if len(clashes) != 1 else ''} this export writes under {self.dest} "
                f"{'are' if len(clashes) != 1 else 'is'} held by files diffspec did not write ({shown}); "
                "nothing was written. Move them away, or export into another folder"
            )
        return same

    def _place(self, item: _Image, target: Path) -> None:
        source = item.source
        src = source.stat()
        try:
            have = target.stat()
        except FileNotFoundError:
            have = None
        if have is not None:
            same_inode = (have.st_ino, have.st_dev) == (src.st_ino, src.st_dev)
            if same_inode and self.link:
                self.stats["unchanged"] += 1
                return
            matches = (
                not same_inode and have.st_size == src.st_size and _sha256(target) == (item.sha256 or _sha256(source))
            )
            if matches:
                # A matching copy: keep it, unless a link was asked for and this filesystem can make one.
                linked = self.link and self._try_link(source, target)
                self.stats["linked" if linked else "unchanged"] += 1
                return
        if self.link and self._try_link(source, target):
            self.stats["linked"] += 1
            return
        atomic_write(target, lambda fh: _copy_into(source, fh))
        self.stats["copied"] += 1

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

    def _delete_ours(self, rel: str) -> None:
        try:
            stale = inside(self.dest, rel, what="delete")
        except ExportError:
            return  # a manifest edited to point elsewhere: never delete outside dest
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
            self.stats["removed"] += 1
            if not self.merge:  # a merge target's folders are theirs, even when empty
                self._prune_empty(stale.parent)

    def _prune_empty(self, folder: Path) -> None:
        base = self.dest.resolve()
        while folder != base and folder.is_relative_to(base):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _read_manifest(path: Path) -> set[str] | None:
    """The files an earlier export here wrote; None when there is no (readable) manifest."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(p) for p in data.get("files", [])}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError, TypeError):
        return set()  # a damaged manifest: this folder was ours, but no file in it is known to be


def _manifest_bytes(fmt: str, files: set[str]) -> bytes:
    return (json.dumps({"format": fmt, "files": sorted(files)}, indent=1) + "\n").encode()


def _refuse_foreign_folder(dest: Path, fmt: str) -> None:
    found = next((p for p in dest.rglob("*") if p.is_file() or p.is_symlink()), None)
    if found is None:
        return
    hint = (
        "add --merge to add the images beside them (nothing of theirs is overwritten or deleted)"
        if fmt == "imagefolder"
        else "choose an empty folder (only --format imagefolder --merge adds to an existing dataset)"
    )
    raise ExportError(
        f"the export destination {dest} already holds files diffspec did not write "
        f"(e.g. {found.relative_to(dest).as_posix()}) and no earlier export's manifest ({MANIFEST}); {hint}"
    )


def _remove_our_leftovers(dest: Path) -> None:
    for tmp in dest.rglob(f".*{TMP_MARKER}*"):
        if _OUR_TMP.match(tmp.name) and tmp.is_file():
            tmp.unlink(missing_ok=True)


def _holds(target: Path, item: _Image | _Bytes) -> bool:
    """Does ``target`` already hold exactly what this export would write there?"""
    if isinstance(item, _Bytes):
        return target.stat().st_size == len(item.data) and target.read_bytes() == item.data
    if target.stat().st_size != item.source.stat().st_size:
        return False
    return _sha256(target) == (item.sha256 or _sha256(item.source))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
