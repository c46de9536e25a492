"""What `apply` shows: a rich progress bar per class and overall (images/s, ETA) and a summary."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from diffspec.plan.render import format_duration


def rate_text(done: int, seconds: float) -> str:
    """Images per second since the run started generating, the figure the summary reports too.
    (rich's own estimate divides by the gap between two updates; batches recorded close
    together made it read 1351 img/s in a 13 img/s run.)"""
    if done <= 0 or seconds <= 0:
        return ""
    return f"{done / seconds:.2f} img/s"


class RunProgress:
    """Progress bars for a run; a no-op when disabled (``-q``, ``--json``)."""

    def __init__(self, console: Any, class_totals: Counter[str], enabled: bool = True) -> None:
        self.enabled = enabled
        self.class_totals = class_totals
        self.console = console
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._overall: Any = None
        self._failed = 0
        self._done = 0
        self._started = 0.0

    def __enter__(self) -> RunProgress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = self.console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=4,
            speed_estimate_period=60,
        )
        self._progress.__enter__()
        self._started = time.perf_counter()
        total = sum(self.class_totals.values())
        self._overall = self._progress.add_task("all", total=total, rate="")
        if len(self.class_totals) > 1:
            for name in sorted(self.class_totals):
                self._tasks[name] = self._progress.add_task(f"  {name}", total=self.class_totals[name], rate="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def advance(self, counts: Counter[str]) -> None:
        if self._progress is None:
            return
        for name, n in counts.items():
            if name in self._tasks:
                self._progress.advance(self._tasks[name], n)
        self._progress.advance(self._overall, sum(counts.values()))
        self._done += sum(counts.values())
        self._progress.update(self._overall, rate=rate_text(self._done, time.perf_counter() - self._started))

    def fail(self, n: int) -> None:
        self._failed += n
        if self._progress is not None:
            self._progress.update(self._overall, description=f"all ({self._failed} failed)")

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"[yellow]{message}[/]", highlight=False)
        elif self.enabled and self.console is not None:  # after the image bars (the stages' notes)
            self.console.print(message, highlight=False, markup=False)


def render_summary(result: Any, console: Any) -> None:
    """The end-of-run summary: made, skipped, failed, time, images/s; how to resume."""
    r = result
    colour = "red" if r.failed else ("yellow" if r.interrupted else "green")
    head = {"finished": "done", "interrupted": "interrupted", "failed": "finished with failures"}.get(r.phase, r.phase)
    console.print(
        f"[bold {colour}]{head}[/]: made {r.made}, skipped {r.skipped} (already there), failed {r.failed}"
        + (f", adopted {r.adopted} (written by a killed run, now recorded)" if getattr(r, "adopted", 0) else "")
        + (f", removed {r.removed}" if r.removed else "")
        + f" in {format_duration(r.seconds)} ({r.images_per_second:.2f} images/s)  [dim]run {r.run_id}[/]",
        highlight=False,
    )
    for fp, why in r.failures[:5]:
        console.print(f"  [red]failed[/] {fp[:12]}: {why}", highlight=False, markup=True)
    if r.failed > 5:
        console.print(
            f"  ... and {r.failed - 5} more (see `diffspec query \"SELECT log FROM runs WHERE run_id = '{r.run_id}'\"`)",
            highlight=False,
            markup=False,
        )
    if r.interrupted or r.failed:
        remaining = r.remaining + r.failed
        console.print(
            f"{remaining} image{'s' if remaining != 1 else ''} still to make; resume with "
            f"`diffspec apply {r.spec_path}` (what is recorded is kept).",
            highlight=False,
            markup=False,
        )
    elif r.made == 0 and r.planned == r.skipped:
        console.print("nothing to do: every planned image is already in the catalog.", highlight=False)
    render_stages(r.stages, console)


def render_stages(stages: dict[str, Any], console: Any) -> None:
    """What the stages after generation did: every planned stage's units, every filter's counts,
    every note, the report."""
    for name, done in stages.get("run", {}).items():
        line = f"stage {name}: made {done['made']}, failed {done['failed']} in {format_duration(done['seconds'])}"
        if done.get("waiting_for_images"):
            line += f"; {done['waiting_for_images']} wait for images not made yet"
        if done.get("interrupted"):
            line += "; interrupted, resume with `diffspec apply`"
        console.print(line, highlight=False, markup=False)
        for f in done.get("filters", []):
            console.print(
                f"filter {f['filter']}: checked {f['checked']}, rejected {f['rejected']}", highlight=False, markup=False
            )
    for note in stages.get("notes", []):
        console.print(f"note: {note}", highlight=False, markup=False)
    if stages.get("report"):
        console.print(f"report: {stages['report']}", highlight=False, markup=False)
