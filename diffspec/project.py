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

    def plan(self) -> Plan:
        return build_plan(self.loaded, self.catalog)

    def apply(self, plan: Plan | None = None, **options: Any) -> Any:
        """Run `plan` (default: a fresh plan of the spec). See `diffspec.run.apply.apply_plan`."""
        from diffspec.run.apply import apply_plan

        plan = plan or self.plan()
        if Path(plan.spec_path).resolve() != self.spec_path.resolve():
            raise PlanError(f"the plan is for {plan.spec_path}, not {self.spec_path}")
        run_stages_after = options.pop("stages", True)
        result = apply_plan(plan, self.loaded, **options)
        if run_stages_after and not result.interrupted:
            from diffspec.stages.runner import run_stages

            outcome = run_stages(self.loaded, self.catalog, result.run_id)
            result = dataclasses.replace(result, stages=outcome.to_dict())
        return result

    def run_stages(self) -> Any:
        """Run the spec's stages over images that lack their output (apply does this itself)."""
        from diffspec.stages.runner import run_stages

        return run_stages(self.loaded, self.catalog)

    def status(self) -> Any:
        from diffspec.run.status import class_status

        return class_status(self.loaded, self.plan(), self.catalog)

    def damaged_images(self) -> list[Any]:
        """Live rows whose image file is missing or has another size (a stat per image, no
        hashing): what `status` warns about. `check` also compares sha256."""
        from diffspec.catalog.check import image_damage

        return image_damage(self.catalog, hashed=False)[0] if self.catalog.exists() else []

    def gc(self, dry_run: bool = False) -> Any:
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

    def export(self, fmt: str, dest: str | Path, **options: Any) -> Any:
        """Write the images as ``fmt`` (imagefolder, yolo, hf, csv) under ``dest``; returns an
        ``ExportResult`` (``.path``, ``.counts`` per class). See `diffspec.export.export`."""
        from diffspec.export import export

        return export(self.loaded, self.catalog, fmt, Path(dest), **options)


def plan_from_file(path: str | Path) -> Plan:
    from diffspec.plan.planfile import load_plan

    return load_plan(Path(path))


def query_output(output: str | Path, sql: str) -> pa.Table:
    """Query a catalog by its output root, without a spec."""
    from diffspec.catalog.query import run_query

    return run_query(Catalog(Path(output)), sql)
