"""A review session's decisions, written to the catalog's ``review`` table as append-only rows.

The durability rule: **a decision is acknowledged only once the Parquet part holding it is
fsynced and renamed into the catalog.** :meth:`DecisionLog.record` blocks until then, and the
server answers the page only after it returns, so the page never shows as saved a decision a
killed server could lose; a killed server loses at most the decisions it had not answered.

Group commit keeps the part count down without a timer: one writer thread takes every decision
waiting in the queue and writes them as one part, so while a part is being fsynced the next
key presses gather into the following one. A person deciding one image at a time writes about
a part per decision; every ``compact_every`` parts (and when the session closes) the session's
parts are merged into one (:meth:`Catalog.compact`, which is safe to interrupt: a crash between
its write and its clean-up leaves identical rows twice, which latest-wins reading ignores).

Review parts are named after the session id, so an ``apply`` running beside the server (which
holds the output lock; the review server never takes it) neither compacts nor reads them as its
own. ``apply`` does delete temp files it finds under the catalog at its start, which can remove
a part being written at that instant: the write is then retried, so the decision still lands.
"""

from __future__ import annotations

import errno
import queue
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta

from diffspec.catalog.columns import table_from_rows
from diffspec.catalog.store import Catalog, new_run_id, utcnow
from diffspec.catalog.verdicts import REVIEW_SCHEMA, REVIEW_TABLE, Decision, decision_histories
from diffspec.errors import DiffspecError, ReviewError

COMPACT_EVERY = 64  # parts per session between merges: a few hundred decisions read in one part
_WRITE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class DecisionRow:
    fingerprint: str
    class_name: str
    decision: Decision
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Request:
    rows: list[DecisionRow]
    undo: bool
    done: Future[None]


class DecisionLog:
    """Durable decisions of one session, plus each image's decision history (for undo)."""

    def __init__(self, catalog: Catalog, session_id: str | None = None, compact_every: int = COMPACT_EVERY) -> None:
        self.catalog = catalog
        self.session_id = session_id or new_run_id()
        self.compact_every = compact_every
        self.parts_written = 0
        self.decisions_written = 0
        self._history: dict[str, list[Decision]] = decision_histories(catalog)
        self._queue: queue.Queue[_Request | None] = queue.Queue()  # None: stop
        self._lock = threading.Lock()  # history and the session clock
        self._last_time: datetime | None = None
        self._closed = False
        self._since_compact = 0
        self._writer = threading.Thread(target=self._write_loop, name="diffspec-review-writer", daemon=True)
        self._writer.start()

    # ---- decisions -------------------------------------------------------------------------
    def record(self, fingerprint: str, class_name: str, decision: Decision) -> None:
        """Append one decision; returns once it is durable in the catalog."""
        self.record_many([(fingerprint, class_name, decision)])

    def undo(self, fingerprint: str, class_name: str) -> Decision | None:
        """Go back to this image's previous decision: append it again (``clear`` when there was
        none before). Returns what was appended, or None when the image has no decision to undo.

        Within a session undo walks back step by step (the undone step is forgotten); a later
        session sees the appended row as one more decision, which is what the catalog says."""
        with self._lock:
            history = self._history.get(fingerprint, [])
            if not history:
                return None
            previous: Decision = history[-2] if len(history) > 1 else "clear"
        self._submit([(fingerprint, class_name, previous)], undo=True)
        return previous

    def record_many(self, decisions: Iterable[tuple[str, str, Decision]]) -> None:
        self._submit(list(decisions), undo=False)

    def history(self, fingerprint: str) -> list[Decision]:
        with self._lock:
            return list(self._history.get(fingerprint, []))

    def _submit(self, decisions: list[tuple[str, str, Decision]], undo: bool) -> None:
        request = _Request([], undo, Future())
        with self._lock:  # times and queue order agree, so the catalog's order is the order taken
            if self._closed:  # checked under the lock: nothing is queued behind the writer's stop
                raise ReviewError("the review session is closed; start `diffspec review` again")
            request.rows.extend(DecisionRow(fp, cls, d, self._tick()) for fp, cls, d in decisions)
            self._queue.put(request)
        request.done.result()  # raises what the writer raised

    def _tick(self) -> datetime:
        """Strictly increasing times within the session, so latest-wins never meets a tie."""
        now = utcnow()
        if self._last_time is not None and now <= self._last_time:
            now = self._last_time + timedelta(microseconds=1)
        self._last_time = now
        return now

    def _remember(self, request: _Request) -> None:
        """Update the histories once the rows are durable, in the order they were written."""
        with self._lock:
            for row in request.rows:
                history = self._history.setdefault(row.fingerprint, [])
                if not request.undo:
                    history.append(row.decision)
                elif history:
                    history.pop()  # the undone step is forgotten; the appended row restored the one before

    # ---- the writer ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while True:  # everything that is waiting goes into this part
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._write([row for request in batch for row in request.rows])
            except BaseException as exc:  # noqa: BLE001 - every waiting request must hear of it
                failure = (
                    exc if isinstance(exc, DiffspecError) else ReviewError(f"could not record the decision: {exc}")
                )
                for request in batch:
                    request.done.set_exception(failure)
                continue
            for request in batch:
                self._remember(request)
                request.done.set_result(None)

    def _write(self, rows: list[DecisionRow]) -> None:
        table = table_from_rows(
            [
                {
                    "fingerprint": r.fingerprint,
                    "class_name": r.class_name,
                    "decision": r.decision,
                    "session_id": self.session_id,
                    "created_at": r.created_at,
                }
                for r in rows
            ],
            REVIEW_SCHEMA,
        )
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                self.catalog.append_stage(REVIEW_TABLE, table, self.session_id)
                break
            except FileNotFoundError:
                # An apply starting beside us removed our temp file as a leftover: write again.
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
            except OSError as exc:
                if exc.errno != errno.ENOENT or attempt == _WRITE_ATTEMPTS - 1:
                    raise
        self.parts_written += 1
        self.decisions_written += len(rows)
        self._since_compact += 1
        if self._since_compact >= self.compact_every:
            self._compact()

    def _compact(self) -> None:
        self.catalog.compact(REVIEW_TABLE, self.session_id)
        self._since_compact = 0

    def close(self) -> None:
        """Write what is queued, stop the writer and merge the session's parts into one."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._writer.join()
        if self.parts_written > 1:
            self._compact()
