"""Properties of fingerprints, targets, dedup and variant assignment (the plan's identity rules)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffspec.catalog.store import Catalog
from diffspec.plan.compile import compile_spec
from diffspec.plan.diff import build_plan
from diffspec.spec.loader import LoadedSpec, load_spec

REPO = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

BASE: dict[str, Any] = {
    "version": 1,
    "dataset": "props",
    "description": "property tests",
    "output": "out",
    "models": {
        "m": {"source": "runwayml/stable-diffusion-v1-5", "revision": "abc123", "scheduler": "ddim"},
        "other": {"source": "stabilityai/sdxl-turbo", "defaults": {"steps": 1, "guidance": 0.0}},
    },
    "defaults": {"model": "m", "size": [64, 64], "steps": 4, "guidance": 5.0, "seed": 11, "negative": "blurry"},
    "vars": {"light": ["soft light", "studio light"]},
    "classes": {
        "cat": {"target": 20, "prompt": "a photo of a cat, {light}", "label": "Cat"},
        "dog": {
            "target": 15,
            "prompt": "a photo of a {breed} dog, {light}",
            "vars": {"breed": ["pug", "corgi", "beagle"]},
        },
    },
}


# ---- helpers ------------------------------------------------------------------------------
def to_yaml(data: Any, indent: int = 0) -> list[str]:
    """Block-style YAML with JSON scalars and flow lists: every line may take a comment."""
    lines = []
    pad = "  " * indent
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{json.dumps(key)}:")
            lines.extend(to_yaml(value, indent + 1))
        else:
            lines.append(f"{pad}{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return lines


def write(folder: Path, data: dict[str, Any], name: str = "spec.yaml", lines: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines if lines is not None else to_yaml(data)) + "\n", encoding="utf-8")
    return path


def load(folder: Path, data: dict[str, Any], **kw: Any) -> LoadedSpec:
    return load_spec(write(folder, data, **kw))


def fingerprints(loaded: LoadedSpec) -> dict[str, list[str]]:
    return {name: units.fingerprints for name, units in compile_spec(loaded).items()}


def with_changes(**classes: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for name, changes in classes.items():
        data["classes"].setdefault(name, {}).update(changes)
    return data


def record(loaded: LoadedSpec, write_catalog: Any) -> None:
    """Write catalog rows for every unit of the spec, as a finished apply would."""
    write_catalog(loaded.output, build_plan(loaded).all_units(), dataset=loaded.spec.dataset)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


# ---- stable identity ------------------------------------------------------------------------
WHITESPACE = st.sampled_from([" ", "  ", "\t", " \n ", "\n", " \t "])


@st.composite
def cosmetic_variants(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """The base spec with key order, comments, prompt whitespace and metadata changed."""
    data = copy.deepcopy(BASE)
    # Metadata: none of it changes pixels.
    data["dataset"] = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,30}", fullmatch=True))
    data["output"] = draw(st.sampled_from(["out", "elsewhere/out", "../outside", "deep/er/out"]))
    data["description"] = draw(
        st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Cc")), max_size=40)
    )
    data["classes"]["cat"]["label"] = draw(
        st.text(
            st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Cc")),
            min_size=1,
            max_size=20,
        )
    )
    if draw(st.booleans()):
        data["classes"]["dog"]["description"] = "a dog class"
    # Whitespace inside and around prompts.
    for cls in data["classes"].values():
        words = cls["prompt"].split(" ")
        cls["prompt"] = (
            draw(WHITESPACE) * draw(st.integers(0, 1))
            + "".join(w + (draw(WHITESPACE) if i < len(words) - 1 else "") for i, w in enumerate(words))
            + draw(WHITESPACE) * draw(st.integers(0, 1))
        )
    data["defaults"]["negative"] = draw(WHITESPACE) + "blurry" + draw(WHITESPACE)

    # Key order at every level.
    def shuffle(mapping: dict[str, Any]) -> dict[str, Any]:
        keys = draw(st.permutations(list(mapping)))
        return {k: shuffle(mapping[k]) if isinstance(mapping[k], dict) else mapping[k] for k in keys}

    data = shuffle(data)
    # Comments: whole-line ones anywhere, trailing ones after a value or a key.
    lines = to_yaml(data)
    out: list[str] = []
    for line in lines:
        if draw(st.integers(0, 3)) == 0:
            out.append(
                " " * draw(st.integers(0, 6))
                + "# "
                + draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
            )
        out.append(line + ("  # note: {light} 'quoted' \"x\"" if draw(st.integers(0, 3)) == 0 else ""))
    return data, out


@SETTINGS
@given(variant=cosmetic_variants())
def test_fingerprints_ignore_key_order_comments_whitespace_and_metadata(
    tmp_path_factory: pytest.TempPathFactory, variant: tuple[dict[str, Any], list[str]]
) -> None:
    folder = tmp_path_factory.mktemp("cosmetic")
    base = load(folder, BASE, name="base.yaml")
    data, lines = variant
    edited = load(folder, data, name="edited.yaml", lines=lines)
    assert fingerprints(edited) == fingerprints(base)
    base_units, edited_units = compile_spec(base), compile_spec(edited)
    for name in base_units:
        # Seeds derive from (base seed, class, index): renaming the dataset changes none.
        assert base_units[name].seeds.tolist() == edited_units[name].seeds.tolist()


def test_metadata_edit_plans_no_work(folder: Path, write_catalog: Any) -> None:
    base = load(folder, BASE)
    record(base, write_catalog)
    data = copy.deepcopy(BASE)
    data["dataset"] = "renamed dataset"
    data["description"] = "new words"
    data["classes"]["cat"]["label"] = "Felis catus"
    data["classes"]["dog"]["description"] = "good dogs"
    plan = build_plan(load(folder, data))
    assert not plan.has_changes
    assert plan.total_keep == 35


def test_renaming_a_model_entry_changes_no_fingerprint(folder: Path) -> None:
    data = copy.deepcopy(BASE)
    data["models"] = {"renamed": data["models"]["m"], "other": data["models"]["other"]}
    data["defaults"]["model"] = "renamed"
    assert fingerprints(load(folder, data, name="b.yaml")) == fingerprints(load(folder, BASE, name="a.yaml"))


@pytest.mark.parametrize(
    "edit",
    [
        {"defaults": {"steps": 5}},
        {"defaults": {"guidance": 5.5}},
        {"defaults": {"size": [64, 72]}},
        {"defaults": {"seed": 12}},
        {"defaults": {"negative": "blurry, dark"}},
        {"defaults": {"scheduler": "euler"}},
        {"models": {"m": {"revision": "def456"}}},
        {"models": {"m": {"dtype": "float16"}}},
        {"models": {"m": {"scheduler_kwargs": {"eta": 0.5}}}},
        {"classes": {"cat": {"model": "other"}, "dog": {"model": "other"}}},
    ],
    ids=lambda e: json.dumps(e),
)
def test_anything_that_changes_pixels_changes_every_fingerprint(folder: Path, edit: dict[str, Any]) -> None:
    def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for key, value in overlay.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    before = fingerprints(load(folder, BASE, name="a.yaml"))
    after = fingerprints(load(folder, merge(BASE, edit), name="b.yaml"))
    for name in before:
        assert not set(before[name]) & set(after[name]), f"{edit} left some units of {name} unchanged"


# ---- monotone targets ---------------------------------------------------------------------
@SETTINGS
@given(old=st.integers(0, 300), extra=st.integers(1, 300))
def test_raising_a_target_adds_exactly_the_difference(
    tmp_path_factory: pytest.TempPathFactory, write_catalog: Any, old: int, extra: int
) -> None:
    folder = tmp_path_factory.mktemp("raise")
    before = load(folder, with_changes(dog={"target": old}))
    record(before, write_catalog)
    after = load(folder, with_changes(dog={"target": old + extra}))
    fps_before, fps_after = fingerprints(before), fingerprints(after)
    assert fps_after["dog"][:old] == fps_before["dog"]  # the first `old` units are the same units
    assert len(fps_after["dog"]) - len(fps_before["dog"]) == extra
    assert fps_after["cat"] == fps_before["cat"]
    plan = build_plan(after)
    by_class = {c.name: c for c in plan.classes}
    assert (by_class["dog"].create, by_class["dog"].keep, by_class["dog"].remove) == (extra, old, 0)
    assert (by_class["cat"].create, by_class["cat"].keep, by_class["cat"].remove) == (0, 20, 0)
    assert {u.fingerprint for u in plan.units_to_create()} == set(fps_after["dog"][old:])


@SETTINGS
@given(old=st.integers(1, 300), data=st.data())
def test_lowering_a_target_removes_only_that_class_surplus(
    tmp_path_factory: pytest.TempPathFactory, write_catalog: Any, old: int, data: st.DataObject
) -> None:
    new = data.draw(st.integers(0, old - 1))
    folder = tmp_path_factory.mktemp("lower")
    before = load(folder, with_changes(dog={"target": old}))
    record(before, write_catalog)
    plan = build_plan(load(folder, with_changes(dog={"target": new})))
    by_class = {c.name: c for c in plan.classes}
    assert plan.total_create == 0
    assert (by_class["dog"].keep, by_class["dog"].remove) == (new, old - new)
    assert (by_class["cat"].keep, by_class["cat"].remove, by_class["cat"].create) == (20, 0, 0)
    assert {r.fingerprint for r in plan.removals} == set(fingerprints(before)["dog"][new:])
    assert {r.class_name for r in plan.removals} == {"dog"}
    assert all(r.path.startswith("images/dog/") for r in plan.removals)


def test_removing_a_class_shows_its_removals(folder: Path, write_catalog: Any) -> None:
    before = load(folder, BASE)
    record(before, write_catalog)
    data = copy.deepcopy(BASE)
    del data["classes"]["dog"]
    plan = build_plan(load(folder, data))
    by_class = {c.name: c for c in plan.classes}
    assert by_class["dog"].remove == 15 and by_class["cat"].keep == 20
    assert plan.total_remove == 15 and plan.total_create == 0


# ---- dedup --------------------------------------------------------------------------------
def test_same_prompt_and_seed_key_is_one_unit_owned_by_first_class_by_name(folder: Path) -> None:
    data = copy.deepcopy(BASE)
    same = {"prompt": "a photo of a fox", "seed_key": "foxes"}
    # Listed in reverse name order: ownership follows names, not the order in the file.
    data["classes"] = {"zorro": {**same, "target": 15}, "fox": {**same, "target": 10}}
    plan = build_plan(load(folder, data))
    by_class = {c.name: c for c in plan.classes}
    assert [c.name for c in plan.classes] == ["zorro", "fox"]  # shown in spec order
    assert (by_class["fox"].create, by_class["fox"].shared) == (10, 0)
    assert (by_class["zorro"].create, by_class["zorro"].shared) == (5, 10)
    units = list(plan.all_units())
    assert len(units) == 15 and len({u.fingerprint for u in units}) == 15
    shared = [u for u in units if u.index < 10]
    assert all(u.class_name == "fox" and u.classes == ("fox", "zorro") for u in shared)
    assert all(u.class_name == "zorro" and u.classes == ("zorro",) for u in units if u.index >= 10)
    made = list(plan.units_to_create())
    assert len(made) == 15 and {u.fingerprint for u in made} == {u.fingerprint for u in units}


def test_different_seed_keys_do_not_dedup(folder: Path) -> None:
    data = copy.deepcopy(BASE)
    data["classes"] = {
        "fox": {"prompt": "a photo of a fox", "target": 10},
        "zorro": {"prompt": "a photo of a fox", "target": 10},
    }
    plan = build_plan(load(folder, data))
    assert plan.total_create == 20 and all(c.shared == 0 for c in plan.classes)


def test_two_templates_rendering_one_text_make_one_unit(folder: Path) -> None:
    data = copy.deepcopy(BASE)
    data["vars"] = {"color": ["black"], "animal": ["cat"]}
    data["classes"] = {
        "a": {"target": 12, "seed_key": "k", "prompt": ["a {color} {animal}", "a black  cat", "a {color}\tcat"]},
        "b": {"target": 12, "seed_key": "k", "prompt": "a black cat"},
        "c": {"target": 12, "seed_key": "k", "prompt": "{color_phrase}", "vars": {"color_phrase": ["a  black cat "]}},
    }
    loaded = load(folder, data)
    compiled = compile_spec(loaded)
    assert len(compiled["a"].variants) == 1 and compiled["a"].variants[0].prompt == "a black cat"
    assert compiled["a"].fingerprints == compiled["b"].fingerprints == compiled["c"].fingerprints
    plan = build_plan(loaded)
    assert plan.total_create == 12
    assert {c.name: c.shared for c in plan.classes} == {"a": 0, "b": 12, "c": 12}


# ---- small edits, small plans -------------------------------------------------------------
N_UNITS = 2000


def _var_spec(values: list[str], name: str) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["vars"] = {}
    data["classes"] = {name: {"target": N_UNITS, "prompt": "a photo of a {thing}", "vars": {"thing": values}}}
    return data


def _prompts(loaded: LoadedSpec, name: str) -> list[str]:
    units = compile_spec(loaded)[name]
    return [units.variants[v].prompt for v in units.variant_of.tolist()]


def _units_by_prompt(loaded: LoadedSpec, name: str) -> dict[str, str]:
    units = compile_spec(loaded)[name]
    return {fp: units.variants[v].prompt for fp, v in zip(units.fingerprints, units.variant_of.tolist())}


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 8), name=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True))
def test_adding_a_var_value_moves_only_what_the_new_value_needs(
    tmp_path_factory: pytest.TempPathFactory, k: int, name: str
) -> None:
    folder = tmp_path_factory.mktemp("add")
    values = [f"thing{i}" for i in range(k)]
    before = _units_by_prompt(load(folder, _var_spec(values, name), name="before.yaml"), name)
    after = _units_by_prompt(load(folder, _var_spec(values + ["newcomer"], name), name="after.yaml"), name)
    gone = set(before) - set(after)
    made = set(after) - set(before)
    # The new value gets its fair share and takes exactly that many units from the others: the minimum.
    assert len(made) == len(gone) and len(made) in (N_UNITS // (k + 1), -(-N_UNITS // (k + 1))), (k, len(made))
    assert all(after[fp] == "a photo of a newcomer" for fp in made), "only the new value's units are new"


@settings(max_examples=12, deadline=None)
@given(k=st.integers(2, 8), data=st.data())
def test_removing_a_var_value_moves_only_its_units(
    tmp_path_factory: pytest.TempPathFactory, k: int, data: st.DataObject
) -> None:
    gone = data.draw(st.integers(0, k - 1))
    folder = tmp_path_factory.mktemp("remove")
    values = [f"thing{i}" for i in range(k)]
    before = _units_by_prompt(load(folder, _var_spec(values, "things"), name="before.yaml"), "things")
    after = _units_by_prompt(
        load(folder, _var_spec([v for i, v in enumerate(values) if i != gone], "things"), name="after.yaml"), "things"
    )
    held = {fp for fp, p in before.items() if p == f"a photo of a thing{gone}"}
    assert set(before) - set(after) == held  # no rebalancing move: the others only gain units


def test_plan_says_how_many_images_a_var_change_makes_obsolete(folder: Path, write_catalog: Any) -> None:
    before = load(folder, _var_spec(["a", "b", "c"], "things"))
    record(before, write_catalog)
    plan = build_plan(load(folder, _var_spec(["a", "b"], "things")))
    (things,) = plan.classes
    held = sum(p == "a photo of a c" for p in _prompts(before, "things"))
    assert things.remove == held and things.create == held and things.keep == N_UNITS - held


# ---- canonical text == fast-path fingerprint ------------------------------------------------
@pytest.mark.parametrize("spec", sorted(p.name for p in (REPO / "specs").glob("*.yaml")))
def test_canonical_text_hashes_to_the_fingerprint(specs_copy: Path, spec: str) -> None:
    loaded = load_spec(f"specs/{spec}")
    # Classes that take their prompts from captions get some (brackets escaped, as the plan does).
    captions = {name: ("a caption", r"a \(bracketed\) caption") for name in loaded.classes}
    compiled = compile_spec(loaded, captions)
    count = 0
    for units in compiled.values():
        for unit in units.units():
            assert hashlib.sha256(unit.canonical().encode("utf-8")).hexdigest() == unit.fingerprint
            count += 1
    assert count > 0
    if spec == "ads.yaml":  # the one with input images and masks
        units = [u for cu in compiled.values() for u in cu.units()]
        assert any(u.input_hash for u in units) and any(u.mask_hash for u in units)
        assert all(u.input_hash and f'"{u.input_hash}"' in u.canonical() for u in units)


PROMPT_TEXT = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x10FFFF, blacklist_categories=("Cs", "Cc", "Co", "Cn")),
    min_size=1,
    max_size=40,
)


@SETTINGS
@given(
    prompt=PROMPT_TEXT.filter(lambda t: "{" not in t and "}" not in t and t.strip()),
    negative=PROMPT_TEXT.filter(lambda t: t.strip()),
    seeds=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=5),
)
def test_canonical_text_matches_fast_path_for_any_text_and_seed(
    tmp_path_factory: pytest.TempPathFactory, prompt: str, negative: str, seeds: list[int]
) -> None:
    data = copy.deepcopy(BASE)
    data["defaults"]["negative"] = negative
    data["classes"] = {"any": {"prompt": prompt, "seeds": seeds}}
    loaded = load(tmp_path_factory.mktemp("canon"), data)
    units = list(compile_spec(loaded)["any"].units())
    assert [u.seed for u in units] == seeds
    for unit in units:
        assert hashlib.sha256(unit.canonical().encode("utf-8")).hexdigest() == unit.fingerprint


def test_catalog_fixture_writes_rows_the_planner_reads(folder: Path, write_catalog: Any) -> None:
    loaded = load(folder, BASE)
    record(loaded, write_catalog)
    assert len(Catalog(loaded.output).index()) == 35
