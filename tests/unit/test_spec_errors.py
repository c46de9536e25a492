"""What a user sees for a broken spec: every problem, each with file:line:column and a message
that says what was expected (and a did-you-mean for a misspelling).

Each file in tests/fixtures/broken_specs/ holds one kind of mistake (its first line says which);
`three_*` files hold several, to show that all of them are reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffspec.cli import app
from diffspec.errors import SpecError
from diffspec.spec.loader import load_spec

REPO = Path(__file__).resolve().parents[2]
BROKEN_DIR = Path("tests/fixtures/broken_specs")  # relative to the repo root: stable in snapshots
BROKEN = sorted(p.name for p in (REPO / BROKEN_DIR).glob("*.yaml"))
POSITION = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): \S")


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def _problems(path: Path | str, profile: str | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, profile=profile)
    return info.value


def test_there_are_at_least_20_kinds_of_mistake() -> None:
    assert len(BROKEN) >= 20


@pytest.mark.parametrize("name", BROKEN)
def test_broken_spec_reports_positions(name: str, snapshot) -> None:
    path = BROKEN_DIR / name
    error = _problems(path)
    assert error.problems, "a SpecError without problems tells the user nothing"
    lines = [str(p) for p in error.problems]
    for problem, line in zip(error.problems, lines):
        assert problem.position is not None, line
        assert problem.position.file == str(path), line
        assert problem.position.line >= 1 and problem.position.column >= 1
        assert POSITION.match(line), line
        assert str(REPO) not in line, "messages show paths relative to the working folder"
    # The first line of each fixture says what is wrong with it: keep the snapshot self-explaining.
    mistake = (REPO / path).read_text(encoding="utf-8").splitlines()[0].removeprefix("# ")
    assert f"# {mistake}\n" + "\n".join(lines) == snapshot


def test_unknown_profile_is_reported_with_suggestion(snapshot) -> None:
    error = _problems("specs/quickstart.yaml", profile="tinny")
    assert [str(p) for p in error.problems] == snapshot
    assert "did you mean 'tiny'?" in str(error)


def test_profile_of_a_spec_without_profiles(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text((REPO / BROKEN_DIR / "empty_var.yaml").read_text().replace("lighting: []", "lighting: [soft]"))
    error = _problems(spec, profile="fast")
    assert "this spec defines no profiles" in str(error)


@pytest.mark.parametrize(
    ("name", "count"),
    [("three_mistakes.yaml", 3), ("three_semantic_mistakes.yaml", 3), ("class_name_escapes_output.yaml", 2)],
)
def test_every_mistake_of_a_file_is_reported(name: str, count: int) -> None:
    error = _problems(BROKEN_DIR / name)
    assert len(error.problems) == count, str(error)
    assert len({(p.position.line, p.position.column) for p in error.problems}) == count  # type: ignore[union-attr]
    assert str(error).startswith(f"{count} errors in spec\n")


def test_a_template_mistake_is_reported_once_not_once_per_row() -> None:
    (problem,) = _problems(BROKEN_DIR / "classes_from_template_mistake.yaml").problems
    assert "{cusine}; did you mean 'cuisine'?" in problem.message
    assert problem.message.endswith("(and the same for 1 more class from classes_from)")
    assert (problem.position.line, problem.position.column) == (12, 5)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("unknown_top_level_key.yaml", "did you mean 'classes'?"),
        ("misspelled_class_key.yaml", "did you mean 'target'?"),
        ("unknown_model_in_class.yaml", "did you mean 'sd15'?"),
        ("unknown_scheduler.yaml", "did you mean 'dpmpp_2m'?"),
        ("undefined_template_var.yaml", "did you mean 'lighting'?"),
        ("unknown_filter.yaml", "did you mean 'clip_score'?"),
        ("csv_column_missing.yaml", "did you mean 'dish'?"),
        ("classes_from_name_column_missing.yaml", "did you mean 'dish'?"),
    ],
)
def test_misspellings_get_a_suggestion(name: str, expected: str) -> None:
    assert expected in str(_problems(BROKEN_DIR / name))


def test_position_points_at_the_offending_key() -> None:
    (problem,) = _problems(BROKEN_DIR / "negative_steps.yaml").problems
    assert (problem.position.line, problem.position.column) == (8, 3)  # type: ignore[union-attr]
    assert "`steps` must be ≥ 1, got -3" in problem.message
    (problem,) = _problems(BROKEN_DIR / "duplicate_yaml_key.yaml").problems
    assert (problem.position.line, problem.position.column) == (10, 3)  # type: ignore[union-attr]


def test_validate_dir_reports_every_file_and_exits_1() -> None:
    result = CliRunner().invoke(app, ["validate", str(BROKEN_DIR)])
    assert result.exit_code == 1
    output = result.output
    assert "Traceback" not in output and "internal error" not in output
    for name in BROKEN:
        assert f"{BROKEN_DIR / name}:" in output, f"no error listed for {name}"
    assert f"in {len(BROKEN)} of {len(BROKEN)} specs" in output
    error_lines = [line for line in output.splitlines() if POSITION.match(line)]
    expected = sum(len(_problems(BROKEN_DIR / name).problems) for name in BROKEN)
    assert len(error_lines) == expected
    assert f"{expected} errors in" in output


def test_validate_json_lists_positions_of_every_file() -> None:
    result = CliRunner().invoke(app, ["validate", "--json", str(BROKEN_DIR)])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert sorted(Path(entry["spec"]).name for entry in payload) == BROKEN
    for entry in payload:
        assert not entry["ok"] and entry["errors"]
        for problem in entry["errors"]:
            assert problem["file"] == entry["spec"] and problem["line"] >= 1 and problem["column"] >= 1


def test_validate_mixes_good_and_bad_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "specs/quickstart.yaml", str(BROKEN_DIR / "negative_steps.yaml")])
    assert result.exit_code == 1
    assert "ok specs/quickstart.yaml" in result.output
    assert "negative_steps.yaml:8:3: `steps` must be ≥ 1, got -3" in result.output
    assert "1 error in 1 of 2 specs" in result.output


def test_validate_good_specs_exits_0() -> None:
    result = CliRunner().invoke(app, ["validate", "specs"])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok specs/") == len(list((REPO / "specs").glob("*.yaml")))


@pytest.mark.parametrize("command", ["plan", "validate"])
def test_commands_on_a_broken_spec_print_the_error_without_traceback(command: str) -> None:
    result = CliRunner().invoke(app, [command, str(BROKEN_DIR / "three_mistakes.yaml")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "three_mistakes.yaml:8:3: `steps` must be ≥ 1, got 0" in result.output
    assert "three_mistakes.yaml:11:48: unknown key `guidanse`; did you mean 'guidance'?" in result.output


def test_missing_spec_file_is_an_error_not_a_traceback() -> None:
    result = CliRunner().invoke(app, ["validate", "no/such/spec.yaml"])
    assert result.exit_code == 1
    assert "spec file not found: no/such/spec.yaml" in result.output
    assert "Traceback" not in result.output


def test_mistakes_in_a_profile_point_into_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copytree(REPO / "specs", tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    spec = Path("specs/pizza.yaml")
    lines = spec.read_text().splitlines()
    typo = next(i for i, line in enumerate(lines) if line.strip() == "burnt: {target: 30}")
    lines[typo] = lines[typo].replace("target", "taget")
    wrong_model = next(i for i, line in enumerate(lines) if line.strip() == "model: sdxl-turbo")
    lines[wrong_model] = lines[wrong_model].replace("sdxl-turbo", "sdxl-trubo")
    spec.write_text("\n".join(lines) + "\n")
    load_spec(spec)  # profiles are overlays: the base spec is still valid
    (problem,) = _problems(spec, profile="small_diverse").problems
    assert str(problem).startswith(f"specs/pizza.yaml:{typo + 1}:")
    assert "unknown key `taget`; did you mean 'target'?" in problem.message
    (problem,) = _problems(spec, profile="burn_patterns").problems
    assert str(problem).startswith(f"specs/pizza.yaml:{wrong_model + 1}:")
    assert "did you mean 'sdxl-turbo'?" in problem.message


@pytest.mark.parametrize("output", [".", "..", "../..", "./"])
def test_output_may_not_hold_the_spec_folder(tmp_path: Path, output: str) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    spec = folder / "spec.yaml"
    spec.write_text(
        f"version: 1\ndataset: x\noutput: {output!r}\nmodels:\n  m: {{source: builtin:digits}}\n"
        "classes:\n  a: {target: 1, prompt: 'a one'}\n"
    )
    (problem,) = _problems(spec).problems
    assert "would hold the spec's own folder" in problem.message
    assert (problem.position.line, problem.position.column) == (3, 1)  # type: ignore[union-attr]
