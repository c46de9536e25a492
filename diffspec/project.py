"""The library facade: one object whose methods match the CLI verbs.

    from diffspec import Project
    project = Project("specs/quickstart.yaml")
    plan = project.plan()
    result = project.apply(plan)
    table = project.query("SELECT class_name, count(*) FROM images GROUP BY 1")

The CLI only parses arguments, calls these methods and renders what they return.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffspec.catalog.store import Catalog
from diffspec.errors import DiffspecError, PlanError, Problem, SpecError
from diffspec.plan.diff import Plan, build_plan
from diffspec.spec.loader import LoadedSpec, load_spec, spec_files

if TYPE_CHECKING:
    import pyarrow as pa

    from diffspec.export.common import ExportResult
    from diffspec.export.split import Split
    from diffspec.machine import Machine
    from diffspec.review.server import ReviewServer
    from diffspec.run.apply import ApplyResult
    from diffspec.run.prune import PruneResult
    from diffspec.run.status import StatusReport


@dataclass(frozen=True)
class ValidationResult:
    path: Path
    error: SpecError | None

    @property
    def ok(self) -> bool:
        return self.error is None


def validate(targets: list[str | Path], profile: str | None = None) -> list[ValidationResult]:
    """Validate spec files (or every YAML file in folders); never raises for bad specs."""
    results = []
    files = spec_files(targets)
    if not files:
        raise DiffspecError(f"no spec files found in {', '.join(map(str, targets))}")
    for file in files:
        problems: list[Problem] = []
        try:
            loaded = load_spec(file, profile=profile)
        except SpecError as exc:
            results.append(ValidationResult(file, exc))
            continue
        if profile is None:
            # A typo inside a profile must fail CI too, not only the run that selects it.
            for name in loaded.spec.profiles:
                try:
                    load_spec(file, profile=name)
                except SpecError as exc:
                    for p in exc.problems:
                        tagged = Problem(p.position, f"with --profile {name}: {p.message}", p.path)
                        if tagged not in problems:
                            problems.append(tagged)
        results.append(ValidationResult(file, SpecError(problems) if problems else None))
    return results


class Project:
    """A spec file and its output root."""

    def __init__(self, spec: str | Path, profile: str | None = None) -> None:
        self.spec_path = Path(spec)
        self.profile = profile
        self._loaded: LoadedSpec | None = None

    @property
    def loaded(self) -> LoadedSpec:
        if self._loaded is None:
            self._loaded = load_spec(self.spec_path, profile=self.profile)
        return self._loaded

    @property
    def output(self) -> Path:
        return self.loaded.output

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.output)

    def validate(self) -> LoadedSpec:
        return self.loaded

    def plan(self, *, executor: str | None = None, workers: int | None = None, ray_address: str | None = None) -> Plan:
        """What apply would do and how: ``executor`` and ``workers`` override the spec's budget;
        ``ray_address`` is the Ray cluster to run on (implies ``executor="ray"``; without it
        the ray executor starts a local Ray for the run)."""
        return build_plan(self.loaded, self.catalog, executor=executor, workers=workers, ray_address=ray_address)

    def apply(
        self,
        plan: Plan | None = None,
        *,
        executor: str | None = None,
        workers: int | None = None,
        prune: bool = False,
        progress: bool = True,
        console: Any = None,
        max_units: int | None = None,
        backend_factory: Any = None,
        stages: bool = True,
        machine: Machine | None = None,
        ray_address: str | None = None,
    ) -> ApplyResult:
        """Run ``plan`` (default: a fresh plan of the spec, with ``executor`` / ``workers``), then
        the spec's stages. See `diffspec.run.apply.apply_plan`: the plan alone says what runs."""
        from diffspec.run.apply import apply_plan
        from diffspec.stages.registry import stage_runners

        if plan is None:
            plan = self.plan(executor=executor, workers=workers, ray_address=ray_address)
        else:
            _check_overrides(plan, executor, workers, ray_address)
        if Path(plan.spec_path).resolve() != self.spec_path.resolve():
            raise PlanError(f"the plan is for {plan.spec_path}, not {self.spec_path}")
        if not stages:
            plan = dataclasses.replace(plan, stages=())  # asked for images only
        result = apply_plan(
            plan,
            prune=prune,
            progress=progress,
            console=console,
            max_units=max_units,
            backend_factory=backend_factory,
            machine=machine,
            stage_runners=stage_runners() if stages else None,
        )
        if stages and plan.pending_images and result.phase == "finished":
            # The captions this run made turn its pending image units into concrete ones: plan
            # again (a pure function of the spec and the catalog) and make them in a second run.
            again = self.plan(executor=executor, workers=workers, ray_address=ray_address)
            if again.has_changes:
                second = apply_plan(
                    again,
                    prune=prune,
                    progress=progress,
                    console=console,
                    max_units=max_units,
                    backend_factory=backend_factory,
                    machine=machine,
                    stage_runners=stage_runners(),
                )
                result = _chain(result, second, again)
        review = self.loaded.spec.stages.review
        if stages and not result.interrupted and review is not None and review.report:
            # `review: {report: true}` means: after each apply
            result = dataclasses.replace(result, stages={**result.stages, "report": str(self.report())})
        return result

    def status(self) -> StatusReport:
        from diffspec.run.status import class_status

        return class_status(self.loaded, self.plan(), self.catalog)

    def damaged_images(self) -> list[Any]:
        """Live rows whose image file is missing or has another size (a stat per image, no
        hashing): what `status` warns about. `check` also compares sha256."""
        from diffspec.catalog.check import image_damage

        return image_damage(self.catalog, hashed=False)[0] if self.catalog.exists() else []

    def gc(self, dry_run: bool = False) -> PruneResult:
        from diffspec.run.prune import prune

        return prune(self.plan(), self.catalog, dry_run=dry_run)

    def check(self, repair: bool = False, hashed: bool = True) -> Any:
        """Find damaged catalog parts and missing or damaged image files; with ``repair``,
        quarantine them and rebuild rows from the image files. See `diffspec.run.repair`."""
        from diffspec.run.repair import check

        return check(self.loaded, repair=repair, hashed=hashed)

    def query(self, sql: str) -> pa.Table:
        from diffspec.catalog.query import run_query

        return run_query(self.catalog, sql)

    def report(self, out: str | Path | None = None) -> Path:
        from diffspec.stages.report import write_report

        return write_report(self.loaded, self.catalog, Path(out) if out else None)

    def review(self, port: int = 0, token: str | None = None) -> ReviewServer:
        """A review server for this spec's catalog on 127.0.0.1 (``port`` 0: any free port), not
        yet started: ``start()`` / ``stop()`` it (or use it as a context manager), or ``run()``
        to block until Ctrl-C. ``.url`` holds the token. See `diffspec.review.server`."""
        from diffspec.review.server import ReviewServer

        return ReviewServer(self.loaded, self.catalog, port=port, token=token)

    def export(
        self,
        fmt: str,
        dest: str | Path,
        *,
        link: bool = True,
        include_rejected: bool = False,
        split: Split | float | None = None,
        merge: bool = False,
    ) -> ExportResult:
        """Write the images as ``fmt`` (imagefolder, yolo, hf, coco, csv, captions, captions-txt)
        under ``dest``; returns an ``ExportResult`` (``.path``, ``.counts`` per class).
        ``split``: ``Split(val=0.1, test=0.05)`` or a validation fraction (yolo, hf, coco);
        ``merge``: add an imagefolder export to an existing dataset folder. See `diffspec.export.export`."""
        from diffspec.export import export

        return export(
            self.loaded,
            self.catalog,
            fmt,
            Path(dest),
            link=link,
            include_rejected=include_rejected,
            split=split,
            merge=merge,
        )


def _check_overrides(plan: Plan, executor: str | None, workers: int | None, ray_address: str | None = None) -> None:
    """A given plan runs as planned: an executor, worker count or Ray address that differs is an error."""
    ex = plan.execution
    if ray_address:
        planned = ex.ray.address if ex.ray is not None else None
        if planned != ray_address:
            raise PlanError(
                f"the plan runs on {ex.ray.describe() if ex.ray else 'the ' + ex.executor + ' executor'}, "
                f"not on the Ray cluster at {ray_address}: make the plan with "
                f"`diffspec plan --executor ray --ray-address {ray_address}` (or apply the spec itself)"
            )
    if executor not in (None, "", "auto") and executor != ex.executor:
        raise PlanError(
            f"the plan runs on the {ex.executor} executor, not {executor}: make the plan with "
            f"`diffspec plan --executor {executor}` (or apply the spec itself)"
        )
    if workers is not None and workers != ex.workers:
        raise PlanError(
            f"the plan has {ex.workers} worker{'s' if ex.workers != 1 else ''}, not {workers}: make the plan "
            f"with `diffspec plan --workers {workers}` (or apply the spec itself)"
        )


def plan_from_file(path: str | Path) -> Plan:
    from diffspec.plan.planfile import load_plan

    return load_plan(Path(path))


def query_output(output: str | Path, sql: str) -> pa.Table:
    """Query a catalog by its output root, without a spec."""
    from diffspec.catalog.query import run_query

    return run_query(Catalog(Path(output)), sql)


def _chain(first: ApplyResult, second: ApplyResult, replan: Plan) -> ApplyResult:
    """One result for an apply that ran twice: the second run made the images of captions the
    first one wrote (its plan's pending units)."""
    made = first.made + second.made
    seconds = first.seconds + second.seconds
    runs = {**first.stages.get("run", {})}
    for name, done in second.stages.get("run", {}).items():
        if name in runs:
            runs[name] = {
                k: (runs[name][k] + v if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                for k, v in done.items()
            }
        else:
            runs[name] = done
    note = f"re-planned after the captions: {replan.total_create} images from captions to make (run {second.run_id})"
    return dataclasses.replace(
        second,
        planned=first.planned + second.planned,
        made=made,
        skipped=first.skipped + second.skipped,
        adopted=first.adopted + second.adopted,
        failed=first.failed + second.failed,
        seconds=seconds,
        images_per_second=made / seconds if seconds > 0 else 0.0,
        log=first.log + (note,) + second.log,
        failures=first.failures + second.failures,
        per_class={
            k: first.per_class.get(k, 0) + second.per_class.get(k, 0)
            for k in set(first.per_class) | set(second.per_class)
        },
        stages={"run": runs} if runs else {},
    )
