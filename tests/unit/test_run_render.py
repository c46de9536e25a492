"""What apply and status print."""

from __future__ import annotations

import json

from rich.console import Console

from diffspec.run.apply import ApplyResult
from diffspec.run.render import render_summary
from diffspec.run.status import ClassStatus, RunSummary, StatusReport, render_status


def result(**kw) -> ApplyResult:
    base = dict(
        run_id="r1",
        planned=10,
        made=6,
        skipped=2,
        failed=0,
        interrupted=False,
        seconds=3.0,
        images_per_second=2.0,
        removed=0,
        spec_path="specs/x.yaml",
        phase="finished",
    )
    base.update(kw)
    return ApplyResult(**base)


def text(fn, *args) -> str:
    console = Console(record=True, width=200)
    fn(*args, console)
    return console.export_text()


def test_summary_shows_counts_time_and_rate() -> None:
    out = text(render_summary, result(planned=8))
    assert "made 6, skipped 2 (already there), failed 0" in out and "2.00 images/s" in out


def test_an_interrupted_run_says_how_to_resume() -> None:
    out = text(render_summary, result(interrupted=True, phase="interrupted"))
    assert "interrupted" in out and "2 images still to make" in out and "diffspec apply specs/x.yaml" in out


def test_failures_are_listed() -> None:
    out = text(render_summary, result(failed=1, phase="failed", made=5, failures=(("f" * 64, "bad prompt"),)))
    assert "failed ffffffffffff: bad prompt" in out


def test_result_json_has_a_stable_shape() -> None:
    d = result(failures=(("fp", "why"),), per_class={"b": 1, "a": 5}).to_dict()
    assert list(d) == [
        "run_id",
        "phase",
        "spec",
        "output",
        "planned",
        "made",
        "skipped",
        "adopted",
        "failed",
        "remaining",
        "interrupted",
        "removed",
        "seconds",
        "images_per_second",
        "devices",
        "executor",
        "replanned",
        "made_per_class",
        "failures",
        "log",
        "stages",
    ]
    assert d["remaining"] == 2 and list(d["made_per_class"]) == ["a", "b"]
    json.dumps(d)


def test_status_table_and_json() -> None:
    rows = (
        ClassStatus("a", 10, 8, 2, 1, rejected=3, unreviewed=5, quality=0.91, seconds_per_image=0.012, short=5),
        ClassStatus("b", 5, 5, 0, 0, rejected=0, quality=None),
    )
    run = RunSummary(
        "r9",
        "finished",
        "2026-12-02T10:00:00+00:00",
        "2026-12-02T10:01:00+00:00",
        "inprocess",
        planned=6,
        made=4,
        kept=2,
        adopted=0,
        failed=0,
        seconds=60.0,
    )
    report = StatusReport(rows, run)
    out = text(render_status, report)
    assert "91%" in out and "total" in out and "0.012" in out
    assert "last run r9 (finished" in out and "made 4, kept 2 already there, adopted 0, failed 0" in out
    assert rows[0].to_dict() == {
        "class": "a",
        "target": 10,
        "done": 8,
        "remaining": 2,
        "obsolete": 1,
        "accepted": 0,
        "rejected": 3,
        "unreviewed": 5,
        "short": 5,
        "replace_rejected": False,
        "quality": 0.91,
        "seconds_per_image": 0.012,
    }
    assert "a: short of 5 accepted images (3 rejected)" in out
    assert report.to_dict()["last_run"]["kept"] == 2


def test_progress_rate_is_images_over_elapsed_time_not_the_gap_between_two_batches() -> None:
    import time
    from collections import Counter

    from diffspec.run.render import RunProgress

    view = RunProgress(Console(record=True, width=200), Counter({"a": 128}))
    with view:
        time.sleep(0.5)
        view.advance(Counter({"a": 64}))
        view.advance(Counter({"a": 64}))  # two batches recorded back to back
        rate = float(view._progress.tasks[view._overall].fields["rate"].split()[0])
    assert 100 < rate <= 256  # 128 images in just over 0.5 s, not 64 over the microseconds between them
