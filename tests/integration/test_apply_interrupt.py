"""Ctrl-C: `diffspec apply` stops after the batches in flight, records the run as interrupted,
says how to resume, and the next apply makes exactly the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_apply_support import check_catalog, one_torch_thread, write_spec  # noqa: F401

from diffspec.catalog.store import Catalog
from diffspec.project import Project

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _start(tmp_path: Path, spec: Path, counter: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DIFFSPEC_WRITE_COUNTER": str(counter),
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffspec.cli", "apply", str(spec), "-q"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if counter.exists() and len(counter.read_text().splitlines()) >= 8:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_batches_in_flight_and_the_next_apply_resumes(tmp_path: Path, signum: int) -> None:
    spec = write_spec(tmp_path, 'a: {target: 64, prompt: "a photo of a cat"}', size=32, steps=4, max_batch=4)
    counter = tmp_path / "writes.txt"
    proc = _start(tmp_path, spec, counter)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in out and f"diffspec apply {spec}" in out, out
    output = Project(spec).output
    runs = [r for r in Catalog(output).runs() if r["phase"] != "started"]
    assert [r["phase"] for r in runs] == ["interrupted"]
    made = runs[0]["made"]
    assert 8 <= made < 64
    writes = len(counter.read_text().splitlines())
    assert writes == made, "every image written before the stop is recorded (no batch abandoned mid-way)"
    check_catalog(output, expected=made)

    result = Project(spec).apply(progress=False)
    assert result.made == 64 - made and result.failed == 0
    check_catalog(output, expected=64)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_at_once_without_corruption(tmp_path: Path, signum: int) -> None:
    spec = write_spec(tmp_path, 'a: {target: 64, prompt: "a photo of a cat"}', size=32, steps=4, max_batch=4)
    counter = tmp_path / "writes.txt"
    proc = _start(tmp_path, spec, counter)
    proc.send_signal(signum)
    time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "Traceback" not in out + err
    assert f"diffspec apply {spec}" in out + err, "the message says how to resume"
    output = Project(spec).output
    done = check_catalog(output, raw_unique=True)  # every recorded row whole, its file matching
    assert len(done) < 64
    result = Project(spec).apply(progress=False)
    assert result.made + result.adopted == 64 - len(done) and result.failed == 0
    check_catalog(output, expected=64)
