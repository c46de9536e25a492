"""Batched atomic writes: whole files under their final names, durable, no temp files left."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import diffspec.atomic as atomic
from diffspec.atomic import TMP_MARKER, atomic_write_many


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARKER in p.name]


@pytest.mark.parametrize("syncfs", ["1", "0"])
def test_every_file_lands_whole_and_is_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: str) -> None:
    monkeypatch.setenv("DIFFSPEC_SYNCFS", syncfs)
    calls = {"fsync": 0, "syncfs": 0}
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", counting_fsync)
    if atomic._SYNCFS is not None:
        real_syncfs = atomic._SYNCFS

        def counting_syncfs(fd: int) -> int:
            calls["syncfs"] += 1
            return real_syncfs(fd)

        monkeypatch.setattr(atomic, "_SYNCFS", counting_syncfs)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "old.png").write_bytes(b"old contents")
    files = [(tmp_path / "a" / f"{i}.png", bytes([i]) * (1000 + i)) for i in range(5)]
    files += [(tmp_path / "b" / "x.png", b"x" * 70000), (tmp_path / "a" / "old.png", b"new")]
    atomic_write_many(files)
    for path, data in files:
        assert path.read_bytes() == data
    assert not _temps(tmp_path)
    if syncfs == "1" and atomic._SYNCFS is not None:
        assert calls == {"fsync": 0, "syncfs": 2}  # the data, then the renames
    else:
        assert calls["syncfs"] == 0 and calls["fsync"] == len(files) + 2  # each file, each folder


def test_syncfs_is_used_on_linux() -> None:
    if sys.platform.startswith("linux"):
        assert atomic._SYNCFS is not None


def test_a_failure_leaves_no_temp_file_and_no_new_name(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    files = [(tmp_path / "a" / "1.png", b"one"), (tmp_path / "missing" / "2.png", b"two")]
    with pytest.raises(FileNotFoundError):
        atomic_write_many(files)
    assert not (tmp_path / "a" / "1.png").exists()  # nothing is renamed before every file is written
    assert not _temps(tmp_path)


def test_nothing_to_write_is_fine(tmp_path: Path) -> None:
    atomic_write_many([])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("syncfs", ["1", "0"])
def test_a_batch_larger_than_the_open_file_limit_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: str
) -> None:
    resource = pytest.importorskip("resource")
    monkeypatch.setenv("DIFFSPEC_SYNCFS", syncfs)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        files = [(tmp_path / f"{i}.png", b"%d" % i) for i in range(600)]
        atomic_write_many(files)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert all(path.read_bytes() == data for path, data in files)
    assert not _temps(tmp_path)
