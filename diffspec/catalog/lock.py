"""One `apply` per output root: an flock on `<output>/.diffspec.lock`.

The kernel drops an flock when its process dies (SIGKILL included), so a stale lock from a
dead run never blocks the next one; the JSON inside only serves the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from diffspec.errors import LockError

LOCK_NAME = ".diffspec.lock"


class OutputLock:
    def __init__(self, output: Path, run_id: str, command: str = "apply") -> None:
        self.path = output / LOCK_NAME
        self.run_id = run_id
        self.command = command  # what holds the root, for the message a second comer sees
        self._fd: int | None = None
        self.was_stale = False

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            what = holder.get("command", "apply")
            raise LockError(
                f"another {what} is running on {self.path.parent}, so this {self.command} did not start "
                f"(held by pid {holder.get('pid', '?')} on {holder.get('host', '?')}, run {holder.get('run_id', '?')}, "
                f"started {holder.get('started', '?')}). Wait for it to finish or stop it; "
                "a crashed run's lock is released automatically."
            ) from None
        self.was_stale = bool(_read_holder(fd))
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "run_id": self.run_id,
                    "command": self.command,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ).encode(),
        )
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, object]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
