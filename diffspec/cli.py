"""The `diffspec` command: parse, call the library (diffspec.project), render. Nothing else.

Errors the user can fix are `DiffspecError`s: printed without a traceback, exit 1
(`--debug` shows the traceback). `plan --detailed-exitcode`: 0 no changes, 2 changes, 1 error.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from diffspec.errors import DiffspecError, SpecError

app = typer.Typer(
    name="diffspec",
    help="Declarative, reproducible synthetic image datasets from diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide enough for the plan table when output goes to a file or a CI log.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
_state = {"debug": False}


class PlanFormat(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"


class QueryFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _fail(exc: BaseException) -> None:
    if _state["debug"]:
        raise exc
    # Messages are plain text: escape them, or rich would take e.g. "[at defaults.steps]" for markup.
    if isinstance(exc, SpecError):
        err.print(
            f"[bold red]error:[/] {escape(str(exc.problems[0])) if len(exc.problems) == 1 else ''}".rstrip(),
            highlight=False,
        )
        if len(exc.problems) > 1:
            for problem in exc.problems:
                err.print(f"  {problem}", highlight=False, markup=False)
    else:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(1)


def _run(fn: Any, interrupted: str = "interrupted") -> Any:
    try:
        return fn()
    except DiffspecError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print(interrupted, highlight=False, markup=False)
        raise typer.Exit(130) from None
    except (typer.Exit, SystemExit):
        raise
    except Exception as exc:  # a bug in diffspec, not the user's input: say so plainly
        if _state["debug"]:
            raise
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
            "This is a bug in diffspec. Rerun with --debug for the traceback and report it.",
            highlight=False,
        )
        raise typer.Exit(1) from None


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        # Run as the `diffspec` process (main()), the command is over: keep holding until the
        # process ends, or a signal landing between here and the exit kills it with another code.
        if not _state.get("process"):
            for sig, handler in old.items():
                signal.signal(sig, handler)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    _state["debug"] = debug


ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="Apply a named profile of the spec.")]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor", help="auto (default: inprocess for one worker, processes for more), inprocess, processes or ray."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="The Ray cluster for --executor ray (e.g. ray://head:10001 or head:6379); "
        "default: a local Ray started and stopped with the run.",
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, help="CPU worker processes; default from the budget.")
]


@app.command()
def validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files or folders of them.")],
    profile: ProfileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check specs; report every error of every file with file:line:column."""
    from diffspec.project import validate as validate_specs

    results = _run(lambda: validate_specs(list(specs), profile=profile))
    if as_json:
        payload = [
            {
                "spec": str(r.path),
                "ok": r.ok,
                "errors": [
                    {
                        "file": p.position.file if p.position else None,
                        "line": p.position.line if p.position else None,
                        "column": p.position.column if p.position else None,
                        "message": p.message,
                    }
                    for p in (r.error.problems if r.error else [])
                ],
            }
            for r in results
        ]
        out.print_json(json.dumps(payload))
    else:
        for r in results:
            if r.ok:
                out.print(f"[green]ok[/] {escape(str(r.path))}", highlight=False)
            else:
                for problem in r.error.problems:  # type: ignore[union-attr]
                    err.print(str(problem), highlight=False, markup=False)
    if not all(r.ok for r in results):
        bad = sum(not r.ok for r in results)
        errors = sum(len(r.error.problems) for r in results if r.error)
        err.print(
            f"[red]{errors} error{'s' if errors != 1 else ''} in {bad} of {len(results)} spec{'s' if len(results) != 1 else ''}[/]"
        )
        raise typer.Exit(1)


@app.command()
def plan(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    profile: ProfileOpt = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", "-f", help="text, json or markdown.")] = PlanFormat.text,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Save the plan for `apply PLAN.json`.")] = None,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0: no changes, 2: changes, 1: error.")
    ] = False,
    executor: ExecutorOpt = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Show what apply would create, keep and remove, with time and memory estimates. Needs no GPU."""
    from diffspec.plan.render import render_json, render_markdown, render_table
    from diffspec.project import Project

    the_plan = _run(
        lambda: Project(spec, profile=profile).plan(executor=executor, workers=workers, ray_address=ray_address)
    )
    if out_file is not None:
        from diffspec.plan.planfile import save_plan

        _run(lambda: save_plan(the_plan, out_file))
    if as_json or fmt is PlanFormat.json:
        sys.stdout.write(render_json(the_plan) + "\n")
    elif fmt is PlanFormat.markdown:
        sys.stdout.write(render_markdown(the_plan))
    else:
        render_table(the_plan, out)
        if out_file is not None:
            out.print(f"Saved to {out_file}; run it with `diffspec apply {out_file}`.", highlight=False, markup=False)
    if detailed_exitcode and the_plan.has_changes:
        raise typer.Exit(2)


@app.command()
def apply(
    target: Annotated[Path, typer.Argument(help="Spec file, or a plan file saved by `plan --out`.")],
    profile: ProfileOpt = None,
    prune: Annotated[bool, typer.Option("--prune", help="Also delete images the plan removes.")] = False,
    executor: ExecutorOpt = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Make what the plan says: batched, within the memory budget, resumable."""
    from diffspec.plan.planfile import is_plan_file, load_plan
    from diffspec.project import Project
    from diffspec.run.render import render_summary

    def go() -> Any:
        if is_plan_file(target):
            the_plan = load_plan(target)
            project = Project(the_plan.spec_path, profile=the_plan.profile)
        else:
            project = Project(target, profile=profile)
            the_plan = project.plan(executor=executor, workers=workers, ray_address=ray_address)
        return project.apply(
            the_plan,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            prune=prune,
            progress=not quiet and not as_json,
            console=err,
        )

    # SIGTERM outside the run itself (planning, stages, a signal landing just after the run
    # stopped) is a Ctrl-C too: a clean exit 130 that says how to resume, never a bare kill.
    with _terminate_as_interrupt():
        result = _run(go, interrupted=f"interrupted: what is recorded is kept; resume with `diffspec apply {target}`")
    # The run is over and recorded: a late second Ctrl-C must not cut the summary that says how
    # to resume (or end the process with another code than the run's). Held back while it prints,
    # then the handlers are put back (an in-process caller, or its children, keeps its own).
    with _signals_held():
        if as_json:
            sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        else:
            render_summary(result, out)
    if result.failed or result.interrupted:
        raise typer.Exit(1 if result.failed else 130)


@app.command()
def status(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    profile: ProfileOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Per class: target, done, remaining, rejected by filters, quality, time per image; and the last run."""
    from diffspec.project import Project
    from diffspec.run.status import render_status

    project = Project(spec, profile=profile)
    report = _run(project.status)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        render_status(report, out)
    # `done` counts catalog rows; say so when files behind them are gone or changed.
    damaged = _run(project.damaged_images)
    if damaged:
        shown = ", ".join(d.path for d in damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
        err.print(
            f"[yellow]warning:[/] {len(damaged)} image{'s' if len(damaged) != 1 else ''} counted as done "
            f"{'are' if len(damaged) != 1 else 'is'} missing or damaged on disk: {escape(shown)}. "
            f"Run `diffspec check {escape(str(spec))} --repair` so the next apply makes them again",
            highlight=False,
        )


@app.command()
def check(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    profile: ProfileOpt = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Quarantine damaged files and rebuild rows from the images.")
    ] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Compare image sizes only, not their sha256.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Verify the catalog and image files; exit 1 if anything is damaged (0 after --repair)."""
    from diffspec.project import Project
    from diffspec.run.repair import render_check

    result = _run(lambda: Project(spec, profile=profile).check(repair=repair, hashed=not quick))
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        render_check(result, out)
    if not result.ok and not result.repaired:
        raise typer.Exit(1)


@app.command()
def gc(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    profile: ProfileOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
) -> None:
    """Delete images the spec no longer asks for (what `plan` lists under remove)."""
    from diffspec.project import Project

    result = _run(lambda: Project(spec, profile=profile).gc(dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    out.print(
        f"{verb} {result.count} image{'s' if result.count != 1 else ''}"
        + (f" ({result.bytes / 1e6:.1f} MB)" if result.bytes else "")
    )


@app.command()
def query(
    sql: Annotated[
        str, typer.Argument(help="One read-only SQL statement over images, runs, removed and stage tables.")
    ],
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Spec whose catalog to query.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output root whose catalog to query.")] = None,
    profile: ProfileOpt = None,
    fmt: Annotated[QueryFormat, typer.Option("--format", "-f")] = QueryFormat.table,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the result to a file (csv, json, parquet).")
    ] = None,
) -> None:
    """Query the catalog with SQL (DuckDB, read-only)."""
    from diffspec.project import Project, query_output

    def go() -> Any:
        if spec is not None:
            return Project(spec, profile=profile).query(sql)
        if output is not None:
            return query_output(output, sql)
        raise DiffspecError("say which catalog: --spec SPEC or --output OUTPUT_ROOT")

    table = _run(go)
    from diffspec.catalog.render import write_table

    _run(lambda: write_table(table, fmt.value, out_file, out))


@app.command()
def report(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    profile: ProfileOpt = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="HTML file (default <output>/report.html).")] = None,
) -> None:
    """Write an HTML quality report: a grid of images per class, counts and scores."""
    from diffspec.project import Project

    path = _run(lambda: Project(spec, profile=profile).report(out_file))
    out.print(f"report: {path}", highlight=False)


@app.command()
def review(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    profile: ProfileOpt = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = 0,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser.")] = True,
) -> None:
    """Serve a local page to accept or reject images with the keyboard; decisions go to the catalog."""
    from diffspec.project import Project

    server = _run(lambda: Project(spec, profile=profile).review(port=port))
    out.print(f"review: {server.url}", highlight=False, markup=False, soft_wrap=True)
    out.print("decisions are saved as you make them; Ctrl-C stops the server", highlight=False)
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    with _terminate_as_interrupt():
        try:
            server.run()
        except KeyboardInterrupt:
            pass  # run() stopped the server and wrote every decision it had answered
    log = server.log
    out.print(
        f"stopped: {log.decisions_written} decision{'s' if log.decisions_written != 1 else ''} "
        f"recorded in session {log.session_id}",
        highlight=False,
    )


@app.command("export")
def export_cmd(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    dest: Annotated[Path, typer.Argument(help="Destination folder (or file for csv).")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="imagefolder, yolo, hf, coco, csv, captions or captions-txt.")
    ] = "imagefolder",
    profile: ProfileOpt = None,
    link: Annotated[
        bool, typer.Option("--link/--copy", help="Hard-link images instead of copying when possible.")
    ] = True,
    include_rejected: Annotated[
        bool, typer.Option("--include-rejected", help="Also export rejected images (by a filter or a review).")
    ] = False,
    val: Annotated[
        float | None,
        typer.Option("--val", help="Hold out this fraction for validation, by fingerprint (yolo, hf, coco)."),
    ] = None,
    test: Annotated[
        float | None, typer.Option("--test", help="Hold out this fraction for test, by fingerprint (yolo, hf, coco).")
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            help="Add to an existing dataset folder (imagefolder): never overwrites or deletes a file of its own.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was exported as JSON.")] = False,
) -> None:
    """Export the catalog's images in a format training code reads."""
    from rich.table import Table

    from diffspec.project import Project

    def run() -> Any:
        from diffspec.export.split import Split

        split = Split(val=val or 0.0, test=test or 0.0) if val is not None or test is not None else None
        return Project(spec, profile=profile).export(
            fmt, dest, link=link, include_rejected=include_rejected, split=split, merge=merge
        )

    result = _run(run)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    table = Table(show_edge=False, header_style="bold")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, count in result.counts.items():
        table.add_row(escape(name), str(count))
    if len(result.counts) > 1:
        table.add_row("[bold]total", f"[bold]{result.total}")
    out.print(table)
    if result.splits:
        out.print("splits: " + ", ".join(f"{name} {n}" for name, n in result.splits.items()), highlight=False)
    files = ", ".join(
        f"{n} {k}"
        for k, n in (
            ("linked", result.linked),
            ("copied", result.copied),
            ("unchanged", result.unchanged),
            ("removed", result.removed),
        )
        if n
    )
    out.print(
        f"exported {result.total} image{'s' if result.total != 1 else ''} ({fmt}) to {escape(str(result.path))}"
        + (f" [dim]({files})[/]" if files else ""),
        highlight=False,
    )
    skipped = [
        f"{n} {why}"
        for why, n in (
            ("rejected by filters (--include-rejected to add them)", result.skipped_rejected),
            ("no longer in the spec (see `diffspec plan`)", result.skipped_obsolete),
            ("without labels", result.skipped_unlabelled),
        )
        if n
    ]
    if skipped:
        out.print("skipped: " + "; ".join(skipped), highlight=False, markup=False)
    for note in result.notes:
        out.print(f"note: {note}", highlight=False, markup=False)


@app.command()
def quickstart(
    spec: Annotated[Path, typer.Argument(help="The spec to build.")] = Path("specs/quickstart.yaml"),
    profile: ProfileOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Validate, plan, apply and report the quickstart spec (the embedded digits model), then say where everything is."""
    from diffspec.plan.render import render_table
    from diffspec.project import Project
    from diffspec.run.render import render_summary
    from diffspec.stages.report import overall_recognised, summarize

    project = Project(spec, profile=profile)
    loaded = _run(project.validate)
    out.print(f"[green]valid[/] {escape(str(spec))}: {len(loaded.classes)} classes", highlight=False)
    the_plan = _run(project.plan)
    render_table(the_plan, out)
    result = _run(lambda: project.apply(the_plan, progress=not quiet, console=err))
    render_summary(result, out)
    report_path = result.stages.get("report") or _run(project.report)
    summaries = summarize(loaded, project.catalog)
    share = overall_recognised(summaries)
    if share is not None:
        worst = min((s for s in summaries if s.scored), key=lambda s: s.recognised_share or 0.0)
        out.print(
            f"Recognised as the prompted digit by a classifier trained on real digits: [bold]{share:.1%}[/] "
            f"(lowest class: {escape(worst.name)} {worst.recognised_share:.0%})",
            highlight=False,
        )
    output = loaded.output
    out.print(f"images:  {escape(str(output / 'images'))}", highlight=False)
    out.print(f"catalog: {escape(str(output / 'catalog'))} (Parquet)", highlight=False)
    out.print(f"report:  {escape(str(report_path))}", highlight=False)
    out.print("Try next:", highlight=False)
    query_example = (
        "SELECT class_name, count(*) AS images, avg(seconds) AS s_per_image FROM images GROUP BY 1 ORDER BY 1"
    )
    out.print(f"  diffspec query -s {escape(str(spec))} '{query_example}'", highlight=False)
    out.print(f"  diffspec status {escape(str(spec))}", highlight=False)
    if result.failed or result.interrupted:
        raise typer.Exit(1)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec language."""
    from diffspec.spec.schema import spec_json_schema_text

    sys.stdout.write(spec_json_schema_text())


def main() -> None:
    _state["process"] = True
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            err.print(escape(exc.code))
    _exit_without_finalizing(code)


def _exit_without_finalizing(code: int) -> None:
    """End the process once the command is done, skipping the interpreter's teardown.

    Every file the command wrote is already durable (atomic renames, fsynced), but Arrow's and
    DuckDB's native thread pools can still be torn down while one of their threads is alive,
    which aborts a finished command with "terminate called without an active exception" (exit
    -6, seen in CI beside a concurrent apply). Exit hooks still run, so Ray and multiprocessing
    shut down as usual; only object finalizers are skipped."""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
