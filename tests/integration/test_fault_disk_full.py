"""Disk-full drill: `apply` onto a small real filesystem (a size-limited tmpfs mounted by the
test) that fills mid-run, once while images are written and once while the catalog is.

Must hold: a clear error naming the output root and the space still needed, exit 1, no
traceback, no temp file left, no row whose file is partial; after space is freed the next
apply completes with exactly the planned rows, none twice, every sha256 matching, and images
a full catalog could not record are adopted, not made again.

Mounting needs root and a kernel that allows it here; elsewhere the test is skipped and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_apply_support import check_catalog, write_spec

from diffspec.catalog.store import Catalog

CLASSES = 'a: {target: 24, prompt: "a photo of a cat"}\nb: {target: 24, prompt: "a photo of a dog"}'


def _mount(folder: Path, size_kb: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], check=True, capture_output=True
    )


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a size-limited tmpfs")
    mounted: list[Path] = []
    probe = Path(f"/tmp/diffspec-mount-probe-{os.getpid()}")
    try:
        _mount(probe, 64)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"this machine does not allow mounting a tmpfs here: {exc}")
    subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    yield mounted
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    """Leave ``leave`` bytes free on ``folder``'s filesystem."""
    filler = folder / "filler.bin"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def _apply(spec: Path, counter: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DIFFSPEC_WRITE_COUNTER": str(counter), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffspec.cli", "apply", str(spec), "-q"],
        cwd=spec.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _no_temp_files(root: Path) -> None:
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name], "temp files left behind"


@pytest.mark.parametrize("workers", [1, 2], ids=["inprocess", "processes"])
def test_images_filling_the_disk_stop_cleanly_and_the_next_apply_completes(
    tmp_path: Path, mounts: list[Path], workers: int
) -> None:
    out = tmp_path / "out"
    _mount(out, 4096)
    mounts.append(out)
    spec = write_spec(tmp_path, CLASSES, max_batch=4, extra_budget=f"workers: {workers}")
    filler = _fill(out, 160 * 1024)  # room for a few batches of 32x32 PNGs and their catalog parts
    counter = tmp_path / "writes.txt"
    first = _apply(spec, counter)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "no space left on the filesystem holding" in first.stderr
    assert str(out.resolve()) in first.stderr and "still to make need about" in first.stderr
    assert "Traceback" not in first.stderr + first.stdout
    _no_temp_files(out)
    recorded = check_catalog(out, raw_unique=True) if (out / "catalog").exists() else {}
    assert 0 < len(recorded) < 48  # it filled mid-run

    filler.unlink()
    second = _apply(spec, counter)
    assert second.returncode == 0, second.stdout + second.stderr
    final = check_catalog(out, expected=48)
    assert set(recorded) <= set(final)
    _no_temp_files(out)
    writes = counter.read_text().split()
    assert len(set(writes)) == 48
    # Nothing recorded was made again; at most the batches being written when the disk filled were.
    assert len(writes) <= 48 + 4 * workers
    print(f"\n{first.stderr.strip()}")


def test_a_full_catalog_stops_cleanly_and_the_images_it_could_not_record_are_adopted(
    tmp_path: Path, mounts: list[Path]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    catalog_dir = out / "catalog"
    _mount(catalog_dir, 1024)
    mounts.append(catalog_dir)
    spec = write_spec(tmp_path, CLASSES, max_batch=4)
    filler = _fill(catalog_dir, 24 * 1024)
    counter = tmp_path / "writes.txt"
    first = _apply(spec, counter)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "no space left" in first.stderr and "Traceback" not in first.stderr + first.stdout
    _no_temp_files(out)
    made_before = len(counter.read_text().split())
    recorded = len(Catalog(out).live_images(["fingerprint"])) if Catalog(out).exists() else 0
    assert recorded < 48

    filler.unlink()
    second = _apply(spec, counter)
    assert second.returncode == 0, second.stdout + second.stderr
    check_catalog(out, expected=48)
    _no_temp_files(out)
    writes = counter.read_text().split()
    # Whole images written before the catalog filled up were adopted, not generated twice.
    assert len(writes) - made_before == 48 - made_before
    assert len(set(writes)) == 48
