"""Atomic, durable file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a crash) sees either the old file or the whole new one, never a partial one.
Temp files are named `.<name>.tmp-<pid>-<random>` so a later run can find and remove leftovers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    atomic_write(path, lambda fh: fh.write(data), durable)


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
