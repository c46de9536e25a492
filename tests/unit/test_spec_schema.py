"""The shipped JSON Schema is what `diffspec schema` prints, and every shipped spec satisfies it
(editors using yaml-language-server see what the loader sees)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from diffspec.cli import app
from diffspec.spec.schema import spec_json_schema

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.name for p in (REPO / "specs").glob("*.yaml"))


def _yaml(path: Path):
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def test_schema_command_output_equals_shipped_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    shipped = (REPO / "specs" / "schema.json").read_text(encoding="utf-8")
    assert result.stdout == shipped, "specs/schema.json is stale: run `diffspec schema > specs/schema.json`"


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_spec_satisfies_the_schema(spec: str) -> None:
    schema = json.loads((REPO / "specs" / "schema.json").read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(_yaml(REPO / "specs" / spec)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "broken",
    [
        "unknown_top_level_key.yaml",
        "misspelled_class_key.yaml",
        "negative_steps.yaml",
        "guidance_wrong_type.yaml",
        "size_one_number.yaml",
        "unknown_filter.yaml",
        "missing_models.yaml",
        "wrong_version.yaml",
    ],
)
def test_schema_catches_mistakes_an_editor_can_flag(broken: str) -> None:
    schema = json.loads((REPO / "specs" / "schema.json").read_text(encoding="utf-8"))
    data = _yaml(REPO / "tests" / "fixtures" / "broken_specs" / broken)
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(data))
