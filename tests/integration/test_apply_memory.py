"""Memory at run time and failing units, on the tiny real pipeline.

A CUDA out-of-memory error cannot happen on this CPU-only machine, so these tests inject one:
a test-only subclass of the real Backend raises ``torch.cuda.OutOfMemoryError`` (what
PyTorch raises on a GPU) before calling the real pipeline. That is a legitimate mock of what
cannot run here; everything else (pipeline, writer, catalog) is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_apply_support import check_catalog, one_torch_thread, write_spec  # noqa: F401

from diffspec.catalog.store import Catalog
from diffspec.errors import GenerationError
from diffspec.generate.backend import Backend
from diffspec.project import Project

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class OomAboveTwo(Backend):
    """Raises a CUDA OOM once for a batch larger than 2 (test-only)."""

    raised = 0

    def generate(self, units):
        if len(units) > 2 and OomAboveTwo.raised == 0:
            OomAboveTwo.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return super().generate(units)


class OomUntilSliced(Backend):
    """Raises a CUDA OOM for any batch while the memory strategy is 'none' (test-only)."""

    def generate(self, units):
        if self.strategy == "none":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return super().generate(units)


class OneBadUnit(Backend):
    """Fails one chosen unit with a GenerationError, wherever it sits in a batch (test-only)."""

    bad: str = ""

    def generate(self, units):
        if any(u.fingerprint == OneBadUnit.bad for u in units):
            raise GenerationError("the pipeline rejected this unit (injected by the test)")
        return super().generate(units)


def _log(output: Path, run_id: str) -> list[dict]:
    rows = [r for r in Catalog(output).runs() if r["run_id"] == run_id and r["phase"] != "started"]
    return json.loads(rows[-1]["log"])


def test_out_of_memory_halves_the_batch_and_the_run_completes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'a: {target: 10, prompt: "a photo of a cat"}', max_batch=8)
    project = Project(spec)
    OomAboveTwo.raised = 0
    result = project.apply(progress=False, backend_factory=OomAboveTwo)
    assert (result.made, result.failed, result.phase) == (10, 0, "finished")
    events = [e for e in _log(project.output, result.run_id) if e["event"] == "oom_retry"]
    assert [(e["batch"], e["new_batch"]) for e in events] == [(8, 4)]  # 8 -> 4 (the raise was once)
    sizes = [r["batch_size"] for r in Catalog(project.output).live_images(["batch_size"]).to_pylist()]
    assert max(sizes) == 4 and len(sizes) == 10  # the halved size sticks for the rest of the run
    assert any("out of memory at batch 8" in line for line in result.log)
    check_catalog(project.output, expected=10)


def test_out_of_memory_at_batch_one_escalates_the_memory_strategy(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, 'a: {target: 3, prompt: "a photo of a cat"}', max_batch=2, extra_budget="strategy: none"
    )
    project = Project(spec)
    result = project.apply(progress=False, backend_factory=OomUntilSliced)
    assert (result.made, result.failed) == (3, 0)
    log = _log(project.output, result.run_id)
    assert [e["event"] for e in log if e["event"] in ("oom_retry", "strategy_escalation")] == [
        "oom_retry",
        "strategy_escalation",
    ]
    escalation = next(e for e in log if e["event"] == "strategy_escalation")
    assert (escalation["old"], escalation["new"]) == ("none", "attention_slicing")
    check_catalog(project.output, expected=3)


def test_a_failing_unit_fails_alone_and_the_next_apply_makes_it(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'a: {target: 6, prompt: "a photo of a cat"}', max_batch=4)
    project = Project(spec)
    plan = project.plan()
    OneBadUnit.bad = sorted(plan.units_to_create(), key=lambda u: u.index)[1].fingerprint
    result = project.apply(plan, progress=False, backend_factory=OneBadUnit)
    assert (result.made, result.failed, result.phase) == (5, 1, "failed")
    assert result.failures[0][0] == OneBadUnit.bad and "rejected this unit" in result.failures[0][1]
    log = _log(project.output, result.run_id)
    assert any(e["event"] == "unit_failed" and e["fingerprint"] == OneBadUnit.bad for e in log)
    check_catalog(project.output, expected=5)
    again = Project(spec).apply(progress=False)
    assert (again.made, again.failed) == (1, 0)
    check_catalog(project.output, expected=6)
