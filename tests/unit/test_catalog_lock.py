"""One apply per output root: the lock refuses a second holder and frees itself when its
holder dies, even by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffspec.catalog.lock import LOCK_NAME, OutputLock
from diffspec.errors import DiffspecError, LockError

HOLDER = r"""
import sys, time
from pathlib import Path
from diffspec.catalog.lock import OutputLock
lock = OutputLock(Path(sys.argv[1]), "holder-run").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_holder_is_refused_in_process(tmp_path: Path) -> None:
    with OutputLock(tmp_path, "first"):
        with pytest.raises(LockError, match="another apply is running"):
            OutputLock(tmp_path, "second").acquire()
    with OutputLock(tmp_path, "third") as lock:  # released on exit
        assert lock.run_id == "third"


def test_lock_error_is_a_diffspec_error() -> None:
    assert issubclass(LockError, DiffspecError)


def test_lock_is_free_after_its_holder_is_killed(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockError) as info:
            OutputLock(tmp_path, "mine").acquire()
        assert f"pid {proc.pid}" in str(info.value) and "holder-run" in str(info.value)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            lock = OutputLock(tmp_path, "after-crash").acquire()
            break
        except LockError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        assert lock.was_stale, "the dead holder's record should show the lock was left behind"
        assert "after-crash" in (tmp_path / LOCK_NAME).read_text()
    finally:
        lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""
