"""Run batches on one device: keep the pipeline loaded, survive out-of-memory, isolate bad units.

A :class:`BatchRunner` lives in one process (the driver for in-process runs, a worker
otherwise) and holds at most one pipeline: a batch of another model (``key.load_key()``)
closes it and loads the next. Memory at run time:

* an out-of-memory error (``diffspec.generate.memory.is_out_of_memory``) halves the batch and
  retries; the smaller size sticks for that key for the rest of the run;
* with ``budget.tune_batch`` the first calls of each key measure a few sizes up to the planned
  one and keep the fastest (:mod:`diffspec.run.batch_tuning`);
* at batch size 1 it escalates the memory strategy (``escalate``: attention slicing → VAE
  tiling → model offload → sequential offload) and retries;
* with no strategy left the unit fails.

A unit whose pipeline call raises (a ``GenerationError`` or anything else) is retried alone so
that one bad unit fails by itself; the others of its batch continue. Every step is logged as
an event for the run's ``log``.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffspec.plan.batches import Batch
from diffspec.plan.unit import PipelineKey, WorkUnit
from diffspec.run.batch_tuning import BatchTuner
from diffspec.run.events import RunEvent, UnitFailure, event
from diffspec.run.numerics import thread_invariant_convolutions


@dataclass
class BatchOutput:
    batch_id: int
    items: list[tuple[WorkUnit, Any]] = field(default_factory=list)  # (unit, PIL image)
    seconds: dict[str, float] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    failures: list[UnitFailure] = field(default_factory=list)
    events: list[RunEvent] = field(default_factory=list)
    scheduler_configs: dict[PipelineKey, dict[str, Any]] = field(default_factory=dict)
    dtype: str | None = None


BackendFactory = Callable[..., Any]


def default_backend_factory(
    key: PipelineKey, device: str = "cpu", strategy: str = "none", dtype: str | None = None
) -> Any:
    from diffspec.generate.backend import Backend

    return Backend(key, device=device, strategy=strategy, dtype=dtype)


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def _dtype_of(backend: Any) -> str | None:
    dtype = getattr(backend, "dtype", None) or getattr(getattr(backend, "pipe", None), "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def _speed_fields(backend: Any) -> dict[str, Any]:
    """The speed options the backend applied (none: no field, so the log reads as before)."""
    speed = getattr(backend, "speed", None)
    applied = speed.describe() if speed is not None else {}
    return {"speed": applied} if applied else {}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]


class BatchRunner:
    def __init__(self, device: str, backend_factory: BackendFactory | None = None, worker: int = 0) -> None:
        self.device = device
        self.worker = worker
        self.factory = backend_factory or default_backend_factory
        self.backend: Any = None
        self.load_key: Any = None
        self.strategy: str | None = None
        self.caps: dict[PipelineKey, int] = {}
        self.broken: dict[Any, str] = {}  # load_key -> why it cannot load
        self._sched: dict[PipelineKey, dict[str, Any]] = {}
        self.tuners: dict[PipelineKey, BatchTuner] = {}

    # ---- pipeline ---------------------------------------------------------------------
    def _ensure(self, batch: Batch, out: BatchOutput) -> Any:
        lk = batch.load_key
        if self.backend is not None and self.load_key == lk:
            return self.backend
        self.close()
        t0 = time.perf_counter()
        self.backend = self.factory(batch.key, device=self.device, strategy=batch.strategy)
        seconds = time.perf_counter() - t0
        self.load_key = lk
        self.strategy = batch.strategy
        out.events.append(
            event(
                "load",
                f"loaded {batch.key.model.source} ({batch.key.mode}) on {self.device} "
                f"with strategy {batch.strategy} in {seconds:.1f}s",
                worker=self.worker,
                device=self.device,
                model=batch.key.model.source,
                seconds=round(seconds, 3),
                **_speed_fields(self.backend),
            )
        )
        return self.backend

    def close(self, collect: bool = True) -> None:
        """Free the pipeline. ``collect=False`` at the end of a CPU run only drops it: reference
        counting frees its tensors, while a full gc pass (0.2 s with torch loaded) would hold
        the GIL while the last batch is still being written."""
        if self.backend is not None:
            try:
                if collect or not self.device.startswith("cpu"):
                    self.backend.close()  # frees the pipeline (gc + CUDA cache)
            finally:
                self.backend = None
                self.load_key = None
                self.strategy = None

    def scheduler_config(self, key: PipelineKey) -> dict[str, Any]:
        if key not in self._sched:
            try:
                self._sched[key] = dict(self.backend.scheduler_config(key))
            except Exception as exc:  # recorded, never fatal
                self._sched[key] = {"error": _short(exc)}
        return self._sched[key]

    def _tuner(self, batch: Batch) -> BatchTuner | None:
        """The key's batch-size tuner when the plan asks for tuning (``budget.tune_batch``)."""
        if not batch.tune:
            return None
        if batch.key not in self.tuners:
            self.tuners[batch.key] = BatchTuner(self.caps.get(batch.key, len(batch.units)))
        return self.tuners[batch.key]

    # ---- run --------------------------------------------------------------------------
    def run(self, batch: Batch) -> BatchOutput:
        from diffspec.generate.memory import escalate, is_out_of_memory

        out = BatchOutput(batch.id)
        lk = batch.load_key
        if lk in self.broken:
            out.failures = [UnitFailure(u.fingerprint, self.broken[lk]) for u in batch.units]
            return out
        try:
            backend = self._ensure(batch, out)
        except Exception as exc:
            if is_out_of_memory(exc):
                message = f"out of memory loading {batch.key.model.source} on {self.device}: {_short(exc)}"
            else:
                message = f"cannot load {batch.key.model.source}: {_short(exc)}"
            self.broken[lk] = message
            self.close()
            out.events.append(event("load_failed", message, worker=self.worker, device=self.device))
            out.failures = [UnitFailure(u.fingerprint, message) for u in batch.units]
            return out
        out.dtype = _dtype_of(backend)
        key = batch.key
        tuner = self._tuner(batch)
        pending = list(batch.units)  # not yet cut into calls: sizes follow the cap and the tuner
        todo: deque[tuple[WorkUnit, ...]] = deque()
        isolated: set[str] = set()  # units retried alone after an error
        while todo or pending:
            if not todo:
                size = tuner.next_size() if tuner is not None else len(pending)
                size = max(1, min(size, self.caps.get(key, size), len(pending)))
                todo.append(tuple(pending[:size]))
                del pending[:size]
            chunk = todo.popleft()
            started = time.perf_counter()
            try:
                with thread_invariant_convolutions(self.device):
                    images = backend.generate(list(chunk))
            except Exception as exc:
                if is_out_of_memory(exc):
                    _free_memory()
                    if len(chunk) > 1:
                        half = (len(chunk) + 1) // 2
                        self.caps[key] = min(self.caps.get(key, half), half)
                        if tuner is not None:
                            tuner.cap(self.caps[key])
                        out.events.append(
                            event(
                                "oom_retry",
                                f"out of memory at batch {len(chunk)} on {self.device}: retrying at batch {half}",
                                worker=self.worker,
                                device=self.device,
                                batch=len(chunk),
                                new_batch=half,
                            )
                        )
                        todo.appendleft(chunk[half:])
                        todo.appendleft(chunk[:half])
                        continue
                    current = self.strategy or "none"
                    nxt = escalate(current)
                    if nxt is not None:
                        try:
                            backend.set_strategy(nxt)
                            self.strategy = nxt
                            out.events.append(
                                event(
                                    "strategy_escalation",
                                    f"out of memory at batch 1 on {self.device}: memory strategy {current} -> {nxt}",
                                    worker=self.worker,
                                    device=self.device,
                                    old=current,
                                    new=nxt,
                                )
                            )
                            todo.appendleft(chunk)
                            continue
                        except Exception as exc2:  # the escalation itself failed: give up on the unit
                            exc = exc2
                    message = f"out of memory on {self.device} at batch 1 with strategy {current}: {_short(exc)}"
                    out.events.append(
                        event("unit_failed", message, worker=self.worker, fingerprint=chunk[0].fingerprint)
                    )
                    out.failures.append(UnitFailure(chunk[0].fingerprint, message))
                    continue
                if len(chunk) > 1:
                    out.events.append(
                        event(
                            "isolate",
                            f"batch of {len(chunk)} raised {_short(exc)}; retrying its units one by one",
                            worker=self.worker,
                        )
                    )
                    for unit in reversed(chunk):
                        todo.appendleft((unit,))
                        isolated.add(unit.fingerprint)
                    continue
                message = _short(exc)
                out.events.append(
                    event(
                        "unit_failed",
                        f"{chunk[0].class_name}[{chunk[0].index}] failed: {message}",
                        worker=self.worker,
                        fingerprint=chunk[0].fingerprint,
                    )
                )
                out.failures.append(UnitFailure(chunk[0].fingerprint, message))
                continue
            if tuner is not None and not isolated.intersection(u.fingerprint for u in chunk):
                if tuner.observe(len(chunk), time.perf_counter() - started):
                    out.events.append(
                        event(
                            "batch_tuned",
                            f"{key.model.name} on {self.device}: {tuner.describe()}",
                            worker=self.worker,
                            device=self.device,
                            model=key.model.source,
                            batch=tuner.chosen,
                            trials={str(k): round(v, 6) for k, v in sorted(tuner.seconds_per_image.items())},
                        )
                    )
            by_fp = {g.fingerprint: g for g in images}
            for unit in chunk:
                g = by_fp.get(unit.fingerprint)
                if g is None:
                    out.failures.append(UnitFailure(unit.fingerprint, "the backend returned no image for this unit"))
                    continue
                out.items.append((unit, g.image))
                out.seconds[unit.fingerprint] = float(g.seconds)
                out.batch_sizes[unit.fingerprint] = len(chunk)
        if out.items:
            out.scheduler_configs[key] = self.scheduler_config(key)
        return out
