"""Worker processes and determinism, on the tiny real pipeline.

* the same plan on fresh outputs gives identical image bytes at one batch size, with one
  in-process worker and with two worker processes (and the two agree with each other);
* a worker process that dies (SIGKILL) loses only its in-flight batch: the batch goes back to
  the queue, a new worker starts, and the result is the same bytes;
* across batch sizes 1 and 8 images differ by float rounding at most (measured and printed).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from test_apply_support import check_catalog, one_torch_thread, write_spec  # noqa: F401

from diffspec.catalog.store import Catalog
from diffspec.generate.backend import Backend
from diffspec.project import Project

CLASSES = """
a: {target: 8, prompt: "a photo of a cat"}
b: {target: 4, prompt: "a photo of a {x}", vars: {x: [dog, bird]}}
"""
MARKER_ENV = "DIFFSPEC_TEST_KILL_MARKER"


class KillsItsWorkerOnce(Backend):
    """Test-only: the first batch a worker *process* runs SIGKILLs it (once per marker file),
    like the OOM killer or a segfault would. (The driver hosts one CPU worker in a thread; that
    one is never killed, or the test itself would die.)"""

    def generate(self, units):
        import multiprocessing

        marker = os.environ.get(MARKER_ENV)
        if marker and multiprocessing.parent_process() is not None:  # a worker process, never the driver
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return super().generate(units)


def _apply(
    tmp_path: Path, name: str, *, workers: int | None = None, max_batch: int = 4, **options
) -> tuple[Path, object]:
    spec = write_spec(tmp_path, CLASSES, max_batch=max_batch, output=f"out-{name}", name=f"{name}.yaml")
    project = Project(spec)
    result = project.apply(progress=False, workers=workers, **options)
    assert result.failed == 0 and result.made == 12, result
    return project.output, result


def test_one_and_two_workers_make_identical_bytes_and_a_killed_worker_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    threads = torch.get_num_threads()
    one_a, _ = _apply(tmp_path, "one-a")  # in-process, torch's default threads (all cores)
    torch.set_num_threads(1)
    try:
        one_b, _ = _apply(tmp_path, "one-b")  # in-process, one thread
    finally:
        torch.set_num_threads(threads)
    h1, h2 = check_catalog(one_a, expected=12), check_catalog(one_b, expected=12)
    assert h1 == h2, "one worker, same batch size, fresh outputs: bytes differ"

    two, result = _apply(tmp_path, "two", workers=2)
    assert result.devices == ("cpu", "cpu")
    assert check_catalog(two, expected=12) == h1, "two worker processes made other bytes than one"
    assert max(r["batch_size"] for r in Catalog(two).live_images(["batch_size"]).to_pylist()) == 4
    # one writer of rows: the driver; one part per run after compaction
    assert len(Catalog(two).parts("images")) == 1

    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "killed-once"))
    killed, result = _apply(tmp_path, "two-killed", workers=2, backend_factory=KillsItsWorkerOnce)
    assert (tmp_path / "killed-once").exists()
    events = [e["event"] for e in json.loads([r for r in Catalog(killed).runs() if r["phase"] == "finished"][0]["log"])]
    assert "worker_died" in events and "requeue" in events and "worker_restart" in events
    assert any("exited with code -9" in line for line in result.log)
    assert check_catalog(killed, expected=12) == h1, "the requeued batch made other bytes"


@pytest.mark.usefixtures("one_torch_thread")
def test_batch_size_changes_images_by_float_rounding_at_most(tmp_path: Path) -> None:
    from PIL import Image

    b1, _ = _apply(tmp_path, "batch1", max_batch=1)
    b8, _ = _apply(tmp_path, "batch8", max_batch=8)
    rows1 = {r["fingerprint"]: r["path"] for r in Catalog(b1).live_images(["fingerprint", "path"]).to_pylist()}
    rows8 = {r["fingerprint"]: r["path"] for r in Catalog(b8).live_images(["fingerprint", "path"]).to_pylist()}
    assert rows1.keys() == rows8.keys()
    worst, differing, total = 0, 0, 0
    for fp, path in rows1.items():
        x = np.asarray(Image.open(b1 / path), dtype=np.int16)
        y = np.asarray(Image.open(b8 / rows8[fp]), dtype=np.int16)
        d = np.abs(x - y)
        worst = max(worst, int(d.max()))
        differing += int(np.count_nonzero(d))
        total += d.size
    print(f"\nbatch 1 vs 8: largest per-pixel difference {worst}/255, {differing}/{total} channel values differ")
    assert worst <= 8
    assert differing <= total * 0.05
