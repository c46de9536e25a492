"""`diffspec plan`: exit codes for CI (--detailed-exitcode) and saved plans that refuse to go stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog
from diffspec.cli import app
from diffspec.errors import PlanError
from diffspec.plan.diff import build_plan
from diffspec.plan.planfile import is_plan_file, load_plan
from diffspec.spec.loader import load_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = "specs/quickstart.yaml"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _record_everything(write_catalog: Any, spec: str = SPEC) -> None:
    # Images only: a filter's verdicts are planned units too, and only the filters stage makes
    # them from image files (tests/integration/test_filters_stage.py), so this copy has none.
    path = Path(spec)
    path.write_text(path.read_text().replace("  filters:\n    - classifier: {min_confidence: 0.5}\n", ""))
    loaded = load_spec(spec)
    write_catalog(loaded.output, build_plan(loaded).all_units(), dataset=loaded.spec.dataset)


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_detailed_exitcode_is_2_with_changes(specs_copy: Path, fmt: str) -> None:
    result = invoke("plan", SPEC, "--detailed-exitcode", "--format", fmt)
    assert result.exit_code == 2, result.output
    assert invoke("plan", SPEC, "--format", fmt).exit_code == 0  # without the flag, changes are success


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_detailed_exitcode_is_0_without_changes(specs_copy: Path, write_catalog: Any, fmt: str) -> None:
    _record_everything(write_catalog)
    result = invoke("plan", SPEC, "--detailed-exitcode", "--format", fmt)
    assert result.exit_code == 0, result.output
    if fmt == "text":
        assert "No changes: 300 images are up to date." in result.stdout
    else:
        data = json.loads(result.stdout)
        assert data["changes"] is False and data["totals"] == {
            "create": 0,
            "keep": 300,
            "remove": 0,
            "estimated_seconds": 0.0,
        }


def test_detailed_exitcode_is_2_when_only_removals_remain(specs_copy: Path, write_catalog: Any) -> None:
    _record_everything(write_catalog)
    text = (specs_copy / "quickstart.yaml").read_text().replace("zero:  {target: 30", "zero:  {target: 20")
    (specs_copy / "quickstart.yaml").write_text(text)
    result = invoke("plan", SPEC, "--detailed-exitcode")
    assert result.exit_code == 2
    assert "0 to create, 290 to keep, 10 to remove" in result.stdout
    assert "apply --prune" in result.stdout


def test_detailed_exitcode_is_1_on_an_invalid_spec(specs_copy: Path) -> None:
    broken = REPO / "tests" / "fixtures" / "broken_specs" / "negative_steps.yaml"
    result = invoke("plan", str(broken), "--detailed-exitcode")
    assert result.exit_code == 1
    assert "`steps` must be ≥ 1, got -3" in result.output
    assert "Traceback" not in result.output


def test_detailed_exitcode_is_1_on_a_missing_spec(specs_copy: Path) -> None:
    result = invoke("plan", "specs/nope.yaml", "--detailed-exitcode")
    assert result.exit_code == 1 and "spec file not found" in result.output


def test_saved_plan_loads_back(specs_copy: Path) -> None:
    result = invoke("plan", SPEC, "--out", "plan.json")
    assert result.exit_code == 0, result.output
    assert "Saved to plan.json" in result.stdout
    assert is_plan_file(Path("plan.json"))
    plan = load_plan(Path("plan.json"))
    assert plan.total_create == 300 and plan.dataset == "digits-quickstart"
    saved = json.loads(Path("plan.json").read_text())
    assert {fp for fps in saved["create"].values() for fp in fps} == {u.fingerprint for u in plan.units_to_create()}


def test_saved_plan_refuses_an_edited_spec(specs_copy: Path) -> None:
    assert invoke("plan", SPEC, "--out", "plan.json").exit_code == 0
    spec = specs_copy / "quickstart.yaml"
    spec.write_text(spec.read_text().replace("one:   {target: 30", "one:   {target: 31"))
    with pytest.raises(PlanError, match="changed since"):
        load_plan(Path("plan.json"))


def test_saved_plan_refuses_a_foreign_catalog_row(specs_copy: Path, write_catalog: Any) -> None:
    assert invoke("plan", SPEC, "--out", "plan.json").exit_code == 0
    Catalog(specs_copy.parent / "data" / "quickstart").append_images(
        [ImageRecord(fingerprint="f" * 64, class_name="zero", path="images/zero/" + "f" * 64 + ".png")], "someone-else"
    )
    with pytest.raises(PlanError, match="catalog .* changed since"):
        load_plan(Path("plan.json"))


def test_saved_plan_accepts_its_own_images_appearing(specs_copy: Path, write_catalog: Any) -> None:
    """A resumed apply: the only catalog change is images this very plan makes."""
    assert invoke("plan", SPEC, "--out", "plan.json").exit_code == 0
    loaded = load_spec(SPEC)
    some = list(build_plan(loaded).units_to_create())[:25]
    write_catalog(loaded.output, some, dataset=loaded.spec.dataset)
    plan = load_plan(Path("plan.json"))
    assert plan.total_create == 275 and plan.total_keep == 25


def test_load_plan_refuses_a_file_that_is_not_a_plan(tmp_path: Path) -> None:
    bogus = tmp_path / "plan.json"
    bogus.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PlanError, match="not a diffspec plan file"):
        load_plan(bogus)
    bogus.write_text("{not json")
    with pytest.raises(PlanError, match="cannot read plan file"):
        load_plan(bogus)


def test_error_text_is_printed_verbatim_not_as_markup(specs_copy: Path) -> None:
    broken = REPO / "tests" / "fixtures" / "broken_specs" / "negative_steps.yaml"
    result = invoke("plan", str(broken))
    assert "got -3  [at defaults.steps]" in result.output  # rich would eat "[at ...]" as a style tag


def test_names_that_look_like_markup_render_as_text(specs_copy: Path) -> None:
    spec = specs_copy / "markup.yaml"
    spec.write_text(
        "version: 1\ndataset: markup\noutput: ../data/markup\n"
        "models:\n  '[/x]': {source: builtin:digits}\n  '[red]m[/red]': {source: builtin:digits}\n"
        "defaults: {size: [32, 32]}\n"
        "classes:\n  a: {target: 2, prompt: 'a one', model: '[/x]'}\n  b: {target: 2, prompt: 'a two', model: '[red]m[/red]'}\n"
    )
    result = invoke("plan", "specs/markup.yaml")
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.stdout and "[red]m[/red]" in result.stdout
