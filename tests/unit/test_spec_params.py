"""Resolved parameters: typed, their built-in values defined once (the schema, the loader and
docs/spec.md agree), swept models taken whole, and the errors a model entry can hide."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest

from diffspec.errors import SpecError
from diffspec.plan.compile import expand_variants
from diffspec.spec.loader import ResolvedParams, load_spec
from diffspec.spec.model import PARAM_NAMES
from diffspec.spec.schema import spec_json_schema

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return [str(p) for p in info.value.problems]


def _docs_builtins() -> dict[str, str]:
    """The `built-in` column of the generation-parameter table in docs/spec.md."""
    text = (REPO / "docs" / "spec.md").read_text(encoding="utf-8")
    section = text.split("## Generation parameters", 1)[1].split("\n## ", 1)[0]
    out: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for key in re.findall(r"`([a-z_]+)`", cells[0]):
                out[key] = cells[2]
    return out


def test_builtin_defaults_agree_in_schema_loader_and_docs(tmp_path: Path) -> None:
    spec = _write(
        tmp_path,
        """\
        version: 1
        dataset: d
        models: {m: {source: runwayml/stable-diffusion-v1-5}}
        classes: {c: {prompt: a cat, target: 1}}
        """,
    )
    resolved = load_spec(spec).classes["c"].params
    assert isinstance(resolved, ResolvedParams)
    schema = spec_json_schema()["$defs"]["Defaults"]["properties"]
    docs = _docs_builtins()
    assert set(docs) == set(PARAM_NAMES), "docs/spec.md must list every generation parameter"
    for name in PARAM_NAMES:
        if name == "model":
            assert "default" not in schema[name] or schema[name]["default"] is None
            assert docs[name] == ""
            continue
        value = getattr(resolved, name)
        as_json = (
            [list(value), dict(value)][1] if name == "scheduler_kwargs" else list(value) if name == "size" else value
        )
        assert schema[name]["default"] == as_json, name
        shown = docs[name].strip('"').replace(" ", "")
        assert shown == (json.dumps(as_json) if name in ("size", "scheduler_kwargs") else str(as_json)).replace(
            " ", ""
        ), name
    # The only place the built-ins are written: a model's or a class's `guidance` defaults to null (inherit).
    assert spec_json_schema()["$defs"]["GenParams"]["properties"]["guidance"]["default"] is None
    assert resolved.guidance == 7.5


def test_resolved_params_are_frozen_and_sweeps_replace_them(tmp_path: Path) -> None:
    spec = _write(
        tmp_path,
        """\
        version: 1
        dataset: d
        models: {m: {source: runwayml/stable-diffusion-v1-5}}
        classes: {c: {prompt: a cat, target: 4, steps: 12, sweep: {guidance: [5, 9]}}}
        """,
    )
    cls = load_spec(spec).classes["c"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls.params.steps = 3  # type: ignore[misc]
    swept = cls.params_for({"guidance": 9})
    assert swept == dataclasses.replace(cls.params, guidance=9.0) and isinstance(swept.guidance, float)
    assert cls.params.guidance == 7.5 and swept.steps == 12


SWEEP_MODELS = """\
    version: 1
    dataset: d
    models:
      a:
        source: runwayml/stable-diffusion-v1-5
        scheduler: ddim
        scheduler_kwargs: {timestep_spacing: trailing}
        defaults: {steps: 10, guidance: 3.0, negative: blurry}
      b:
        source: stabilityai/stable-diffusion-xl-base-1.0
        scheduler: euler
        defaults: {steps: 20, guidance: 6.0, size: [1024, 1024]}
    defaults: {model: a}
    classes:
      c:
        prompt: a cat
        target: 4
        guidance: 8.0
        sweep: {model: [a, b]}
    """


def test_a_swept_model_runs_with_its_own_scheduler_and_defaults(tmp_path: Path) -> None:
    loaded = load_spec(_write(tmp_path, SWEEP_MODELS))
    variants = expand_variants(loaded, loaded.classes["c"], {})
    keys = {v.key.model.name: v.key for v in variants}
    a, b = keys["a"], keys["b"]
    assert (a.scheduler, a.scheduler_kwargs, a.steps, (a.width, a.height)) == (
        "ddim",
        (("timestep_spacing", "trailing"),),
        10,
        (512, 512),
    )
    # b's own scheduler (not a's ddim and its kwargs), b's own steps and size
    assert (b.scheduler, b.scheduler_kwargs, b.steps, (b.width, b.height)) == ("euler", (), 20, (1024, 1024))
    assert a.guidance == b.guidance == 8.0, "the class's explicit setting still wins over a model's defaults"
    assert {v.key.model.name: v.negative for v in variants} == {"a": "blurry", "b": ""}


def test_a_swept_model_is_checked_with_its_own_parameters(tmp_path: Path) -> None:
    text = SWEEP_MODELS.replace("size: [1024, 1024]", "size: [1020, 1020]")
    problems = _problems(_write(tmp_path, text))
    assert len(problems) == 1 and "class 'c' (model 'b', sdxl): size 1020x1020" in problems[0], problems


def test_model_defaults_cannot_choose_a_model(tmp_path: Path) -> None:
    spec = _write(
        tmp_path,
        """\
        version: 1
        dataset: d
        models:
          m:
            source: runwayml/stable-diffusion-v1-5
            defaults: {steps: 4, model: other}
          other: {source: runwayml/stable-diffusion-v1-5}
        classes: {c: {prompt: a cat, target: 1, model: m}}
        """,
    )
    problems = _problems(spec)
    assert problems == [
        f"{spec}:6:26: model 'm': its `defaults` cannot choose a model; set `model` in a class or in the spec's `defaults`"
    ]


def test_revision_on_a_local_folder_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    spec = _write(
        tmp_path,
        """\
        version: 1
        dataset: d
        models:
          local: {source: ./weights, revision: abc123}
          hub: {source: runwayml/stable-diffusion-v1-5, revision: abc123}
        defaults: {model: local}
        classes: {c: {prompt: a cat, target: 1}}
        """,
    )
    problems = _problems(spec)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{spec}:4:30: model 'local': `revision` applies to hub ids only")
    assert "identified by its content" in problems[0]


def test_schema_and_semantic_errors_are_reported_in_one_run(tmp_path: Path) -> None:
    spec = _write(
        tmp_path,
        """\
        version: 1
        dataset: d
        models:
          sd: {source: runwayml/stable-diffusion-v1-5}
          broken: {source: runwayml/stable-diffusion-v1-5, family: sdx}
        defaults: {model: sd, steps: 0}
        vars:
          bad: {file: colours.txt, colum: c}
        budget: {max_batch: 0}
        classes:
          wrong_type: {prompt: a cat, target: 1, steps: many}
          odd_size: {prompt: a cat, target: 1, size: [500, 500]}
          unknown_model: {prompt: a cat, target: 1, model: sd2}
          undefined_var: {prompt: "a {colour} cat in {bad}", target: 1}
          no_input: {prompt: a cat, target: 1, mode: img2img}
          uses_broken: {prompt: a cat, target: 1, model: broken}
          bad_name/x: {prompt: a cat, target: 1}
          two_wrong: {prompt: a cat, target: 1, mode: sideways, seeds: x}
        """,
    )
    problems = "\n".join(_problems(spec))
    expected = [
        ":5:",
        "`family` must be",  # schema: the broken model
        ":6:",
        "`steps` must be ≥ 1",  # schema: defaults
        "unknown key `colum`",  # schema: a file var
        "`max_batch` must be ≥ 1",  # schema: budget
        "`steps` must be an integer",  # schema: a class
        "class name 'bad_name/x'",  # schema: a class name
        "`seeds` must be a list",
        "`mode` must be",  # schema: two in one class
        "size 500x500 is not possible for sd models",  # semantic
        "unknown model 'sd2'",  # semantic
        "undefined variable {colour}",  # semantic ({bad} is defined, if broken)
        "uses mode img2img and needs `input",  # semantic
    ]
    for text in expected:
        assert text in problems, f"{text!r} missing from:\n{problems}"
    assert "undefined variable {bad}" not in problems
    assert "unknown model 'broken'" not in problems and "uses_broken" not in problems, (
        "a model that failed validation is not reported again where it is used"
    )
    assert problems.count("\n") + 1 == 13, problems


def test_a_spec_that_cannot_be_set_aside_safely_reports_the_schema_problems_only(tmp_path: Path) -> None:
    # The default model itself is broken: every class would be "without a model", which is false.
    spec = _write(
        tmp_path,
        """\
        version: 1
        dataset: d
        models: {m: {source: runwayml/stable-diffusion-v1-5}}
        defaults: {model: 5}
        classes: {c: {prompt: "a {nope}", target: 1}}
        """,
    )
    problems = _problems(spec)
    assert len(problems) == 1 and "`model` must be a string" in problems[0], problems


_FILTER_BODY = (
    "version: 1\ndataset: d\noutput: out\nmodels:\n  m: {source: builtin:digits}\n"
    'defaults: {model: m, size: [16, 16], steps: 4}\nclasses:\n  one: {target: 2, prompt: "a 1"}\n'
)


def test_clip_score_validates_now_that_it_runs(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        _FILTER_BODY + "stages:\n  replace_rejected: true\n  filters:\n    - near_duplicate: {max_hamming: 4}\n"
        "    - clip_score: {min: 0.2}\n    - blank: {max_std: 3}\n"
    )
    loaded = load_spec(spec)
    assert [f.kind for f in loaded.spec.stages.filters] == ["near_duplicate", "clip_score", "blank"]
    assert loaded.classes["one"].replace_rejected is True


def test_a_filter_listed_twice_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(_FILTER_BODY + "stages:\n  filters:\n    - blank: {}\n    - blank: {max_std: 3}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    assert "blank appears more often" in problem.message and problem.position is not None


def test_clip_score_thresholds_are_cosines(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(_FILTER_BODY + "stages:\n  filters:\n    - clip_score: {min: 22}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert any("`min` must be ≤ 1.0, got 22" in p.message for p in info.value.problems)


def test_a_clip_model_folder_that_is_not_there_is_refused_before_any_image(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(_FILTER_BODY + "stages:\n  filters:\n    - clip_score: {model: ./no-such-clip, min: 0.2}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    assert "looks like a folder, and there is none" in problem.message
    assert problem.position is not None and problem.position.line == _FILTER_BODY.count("\n") + 3
    (tmp_path / "clip").mkdir()
    spec.write_text(_FILTER_BODY + "stages:\n  filters:\n    - clip_score: {model: ./clip, revision: main}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert "`revision` applies to hub ids only" in info.value.problems[0].message


def test_the_digit_classifier_is_refused_for_other_models(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        _FILTER_BODY.replace(
            "models:\n  m: {source: builtin:digits}\n",
            "models:\n  m: {source: builtin:digits}\n  sd: {source: runwayml/stable-diffusion-v1-5}\n",
        )
        + '  two: {target: 1, prompt: "a cat", model: sd, size: [64, 64]}\n'
        + "stages:\n  filters:\n    - classifier: {}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert any("class 'two' uses 'sd'" in p.message for p in info.value.problems)
