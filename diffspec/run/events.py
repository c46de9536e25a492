"""What a run did, as typed events: memory backoff, retries, workers, failures, timing.

Events travel from a worker to the driver (pickled over a pipe) and end up, as JSON, in the
``log`` column of the run's row in the catalog (``diffspec query "SELECT log FROM runs"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

#: Event kinds the progress display shows to the user as they happen.
NOTABLE = frozenset(
    {
        "oom_retry",
        "strategy_escalation",
        "worker_died",
        "worker_restart",
        "batch_failed",
        "load_failed",
        "worker_error",
        "replanned",
    }
)


@dataclass(frozen=True, slots=True)
class RunEvent:
    kind: str
    message: str
    time: str
    fields: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        for key, value in self.fields:
            if key == name:
                return value
        return default

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "event": self.kind, "message": self.message, **dict(self.fields)}


def event(kind: str, message: str, **fields: Any) -> RunEvent:
    return RunEvent(kind, message, datetime.now(timezone.utc).isoformat(timespec="milliseconds"), tuple(fields.items()))


class UnitFailure(NamedTuple):
    """A unit that could not be made, and why (a tuple: ``fingerprint, reason = failure``)."""

    fingerprint: str
    reason: str
