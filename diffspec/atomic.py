"""Atomic, durable file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a crash) sees either the old file or the whole new one, never a partial one.
Temp files are named `.<name>.tmp-<pid>-<random>` so a later run can find and remove leftovers.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

TMP_MARKER = ".tmp-"


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None], durable: bool = True) -> None:
    """Write `path` atomically through `write(fileobj)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # say which file, so a full disk names its filesystem
            raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    def write(fh: BinaryIO) -> None:
        fh.write(data)

    atomic_write(path, write, durable)


def _syncfs_call() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return call


_SYNCFS = _syncfs_call()


def atomic_write_many(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write several files atomically and durably, far cheaper than one `atomic_write` each.

    All temp files are written first, then made durable together, then renamed, then the
    renames are made durable. On Linux one syncfs(2) does each of those two steps: one journal
    commit and one device cache flush per batch instead of one per file (on this project's ext4
    VM: 0.05 ms per small file instead of 0.31, and most of the kernel CPU that per-file fsync
    takes from generation). Elsewhere, or with ``DIFFSPEC_SYNCFS=0``, each file is fsynced and
    each folder once. On return every file is durable under its final name; on an error none
    is left half written (temp files are removed; those already renamed are whole).
    """
    # No file descriptor is held across the batch, so a batch of any size stays far from the
    # process's open-file limit: syncfs needs one descriptor on the filesystem, fsync reopens.
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            tmp = path.parent / f".{path.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
            temps.append((tmp, path))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                if exc.filename is None:  # os.write does not say which file: a full disk should
                    raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
                raise
            finally:
                os.close(fd)
        _sync_files([tmp for tmp, _ in temps])
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    renamed = 0
    try:
        for tmp, path in temps:
            os.replace(tmp, path)
            renamed += 1
        _sync_folders(_folders_of(path for _, path in temps))
    except BaseException:
        for tmp, _ in temps[renamed:]:
            tmp.unlink(missing_ok=True)
        raise


def make_durable(paths: Sequence[Path]) -> None:
    """Make files that already have their final names durable, and their folders' entries."""
    _sync_files(paths)
    _sync_folders(_folders_of(paths))


def _folders_of(paths: Iterable[Path]) -> list[Path]:
    return sorted({path.parent for path in paths})


def _sync_files(paths: Sequence[Path]) -> None:
    """The contents of ``paths`` durable: one syncfs per filesystem, else an fsync per file."""
    if _syncfs_folders(_folders_of(paths)):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync_folders(folders: Sequence[Path]) -> None:
    """The entries of ``folders`` durable: one syncfs per filesystem, else an fsync per folder."""
    if not _syncfs_folders(folders):
        for folder in folders:
            fsync_dir(folder)


def _syncfs_folders(folders: Sequence[Path]) -> bool:
    """syncfs(2) once per filesystem holding ``folders`` (a class folder may be a mount point);
    False if syncfs is unavailable or switched off (``DIFFSPEC_SYNCFS=0``): fsync instead."""
    if _SYNCFS is None or os.environ.get("DIFFSPEC_SYNCFS", "1") == "0":
        return False
    done: set[int] = set()
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        try:
            device = os.fstat(fd).st_dev
            if device not in done:
                if _SYNCFS(fd) != 0:
                    return False
                done.add(device)
        finally:
            os.close(fd)
    return True


def remove_leftovers(folder: Path) -> int:
    """Delete temp files a killed run left behind; returns how many."""
    if not folder.exists():
        return 0
    removed = 0
    for tmp in folder.rglob(f".*{TMP_MARKER}*"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed
