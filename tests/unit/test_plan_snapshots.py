"""The rendered plan (text table, JSON, Markdown) of every shipped spec, against an empty catalog."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from diffspec.cli import app
from diffspec.plan.diff import build_plan
from diffspec.plan.render import render_json, render_markdown, render_table
from diffspec.spec.loader import load_spec

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.name for p in (REPO / "specs").glob("*.yaml"))
# One profile per spec that has any: the overlay path of the loader shows in the plan too.
PROFILES = {
    "quickstart.yaml": "tiny",
    "pizza.yaml": "progression_heavy",
    "fruit.yaml": "preview",
    "food-captions.yaml": "turbo",
    "ads.yaml": "fast",
    "flux-fast.yaml": "exact",
}
CASES = [(name, None) for name in SHIPPED] + [(name, PROFILES[name]) for name in SHIPPED if name in PROFILES]


@pytest.fixture(autouse=True)
def ci_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan as on the CI machine kind (2 cores, 24 GB, no GPU), whatever this one is: the plan
    names the machine it was made on and sizes CPU batches from its RAM."""
    from diffspec import machine

    monkeypatch.setattr(machine, "probe_machine", lambda: machine.Machine((), 24.0, 2, "none"))


def _text(plan) -> str:
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    render_table(plan, console)
    return console.export_text()


def test_every_shipped_spec_is_covered() -> None:
    assert set(SHIPPED) == set(PROFILES), "add the new spec (and one of its profiles) to PROFILES"


@pytest.mark.parametrize(("spec", "profile"), CASES, ids=[f"{s}-{p or 'base'}" for s, p in CASES])
def test_rendered_plan_of_shipped_spec(specs_copy: Path, snapshot, spec: str, profile: str | None) -> None:
    loaded = load_spec(f"specs/{spec}", profile=profile)
    plan = build_plan(loaded)
    assert not (specs_copy.parent / "data").exists() or not any((specs_copy.parent / "data").rglob("*.parquet"))
    assert plan.total_keep == 0 and plan.total_remove == 0
    assert plan.total_create > 0 or plan.pending_images > 0  # food-captions: images wait for captions
    text, as_json, markdown = _text(plan), render_json(plan), render_markdown(plan)
    for rendered in (text, as_json, markdown):
        assert str(specs_copy.parent) not in rendered, "a machine path leaked into the rendered plan"
    assert text == snapshot(name="text")
    assert as_json == snapshot(name="json")
    assert markdown == snapshot(name="markdown")


@pytest.mark.parametrize("spec", ["quickstart.yaml", "ads.yaml"])
def test_cli_plan_prints_what_the_renderers_render(specs_copy: Path, spec: str) -> None:
    plan = build_plan(load_spec(f"specs/{spec}"))
    runner = CliRunner()
    as_json = runner.invoke(app, ["plan", f"specs/{spec}", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == json.loads(render_json(plan))
    short = runner.invoke(app, ["plan", f"specs/{spec}", "--json"])
    assert json.loads(short.stdout) == json.loads(as_json.stdout)
    markdown = runner.invoke(app, ["plan", f"specs/{spec}", "--format", "markdown"])
    assert markdown.exit_code == 0
    assert markdown.stdout == render_markdown(plan)
    text = runner.invoke(app, ["plan", f"specs/{spec}"])
    assert text.exit_code == 0
    assert f"diffspec plan: {plan.dataset}" in text.stdout
    assert f"Plan: {plan.total_create} to create, 0 to keep, 0 to remove" in text.stdout


def test_plan_json_key_order_is_stable(specs_copy: Path) -> None:
    data = json.loads(render_json(build_plan(load_spec("specs/pizza.yaml"))))
    assert list(data) == ["dataset", "spec", "profile", "changes", "totals", "classes", "execution", "stages"]
    assert list(data["classes"][0])[:3] == ["class", "label", "model"]
