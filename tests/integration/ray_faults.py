"""Test-only backends for the Ray executor drills, in a module of their own so that Ray actor
processes import only this (and diffspec), never a test module. They stand in for what cannot
be scheduled on purpose here: a segfault or the OOM killer taking an actor's process."""

from __future__ import annotations

import os

from diffspec.generate.backend import Backend


class ExitsInAnActorOnce(Backend):
    """The first batch any *actor* runs (once per marker file) ends its process with
    ``os._exit(1)`` mid-batch; the driver (``driver_pid``) is never touched."""

    def __init__(self, *args, marker: str, driver_pid: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.marker = marker
        self.driver_pid = driver_pid

    def generate(self, units):
        if os.getpid() != self.driver_pid:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        return super().generate(units)


class Slow(Backend):
    """Generation with a pause per batch, so a drill can act while batches are in flight."""

    def __init__(self, *args, pause: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pause = pause

    def generate(self, units):
        import time

        time.sleep(self.pause)
        return super().generate(units)
