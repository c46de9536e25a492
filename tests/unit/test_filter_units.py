"""Filter units without torch: what their fingerprints cover, the near-duplicate replay, and the
plan's counts with replace_rejected (top-up units past the target, deterministic, counted only
where the option is on)."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import FILTERS_SCHEMA, FILTERS_TABLE, REVIEW_SCHEMA, REVIEW_TABLE
from diffspec.plan.compile import compile_class
from diffspec.plan.diff import build_plan
from diffspec.plan.filter_identity import (
    FilterConfig,
    comparison_chain,
    existing_listing_hash,
    filter_fingerprint,
)
from diffspec.plan.filter_stage import filter_config
from diffspec.plan.render import render_json, render_markdown
from diffspec.plan.stage_identity import HFModelRef
from diffspec.spec.loader import load_spec
from diffspec.stages.filters import duplicate_verdicts

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _spec(tmp_path: Path, replace: bool = True, extra: str = "", filters: str = "- blank: {max_std: 2.0}") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            dataset: d
            output: out
            models: {{m: {{source: builtin:digits}}}}
            defaults: {{model: m, size: [16, 16], steps: 4, seed: 3}}
            vars: {{w: [thin, thick]}}
            classes:
              a: {{target: 4, prompt: "a {{w}} 1"{extra}}}
              b: {{target: 2, prompt: "a 2"}}
            stages:
              replace_rejected: {str(replace).lower()}
              filters:
                {filters}
            """
        )
    )
    return spec


def _reject(output: Path, fps: list[str], minute: int = 0, passed: bool = False) -> None:
    rows = [
        {
            "fingerprint": fp,
            "class_name": "a",
            "filter": "blank",
            "config_hash": "recorded-by-a-test",
            "passed": passed,
            "value": 0.0,
            "run_id": f"r{minute}",
            "created_at": T0 + timedelta(minutes=minute),
        }
        for fp in fps
    ]
    Catalog(output).append_stage(FILTERS_TABLE, pa.Table.from_pylist(rows, schema=FILTERS_SCHEMA), f"r{minute}")


def _made(spec: Path, write_catalog: Any) -> tuple[Any, list[str]]:
    loaded = load_spec(spec)
    plan = build_plan(loaded)
    write_catalog(loaded.output, plan.all_units(), dataset="d")
    return loaded, list(plan.units["a"].fingerprints)


# --------------------------------------------------------------------------- fingerprints


def test_a_filter_fingerprint_covers_its_thresholds_model_and_image(tmp_path: Path) -> None:
    spec = _spec(tmp_path, filters="- clip_score: {min: 0.2, batch_size: 4}")
    loaded = load_spec(spec)
    base = filter_config(loaded, loaded.spec.stages.filters[0])
    fp = filter_fingerprint(base, "image-1")
    assert fp == filter_fingerprint(filter_config(loaded, loaded.spec.stages.filters[0]), "image-1")
    assert fp != filter_fingerprint(base, "image-2")
    higher = dataclasses.replace(base, params=(("max", None), ("min", 0.25)))
    assert fp != filter_fingerprint(higher, "image-1")
    assert base.model is not None
    other_weights = dataclasses.replace(base, model=dataclasses.replace(base.model, revision="abc"))
    assert fp != filter_fingerprint(other_weights, "image-1")
    # batch size changes no score: not in the fingerprint
    spec.write_text(spec.read_text().replace("batch_size: 4", "batch_size: 8"))
    reloaded = load_spec(spec)
    assert filter_fingerprint(filter_config(reloaded, reloaded.spec.stages.filters[0]), "image-1") == fp
    # one filter's threshold is not another's
    blank = FilterConfig("blank", (("max_std", 2.0),))
    assert filter_fingerprint(blank, "image-1") != filter_fingerprint(
        FilterConfig("blank", (("max_std", 3.0),)), "image-1"
    )


def test_a_local_clip_folder_is_identified_by_its_content(tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    spec = _spec(tmp_path, filters=f"- clip_score: {{model: {folder}, min: 0.1}}")
    loaded = load_spec(spec)
    first = filter_config(loaded, loaded.spec.stages.filters[0])
    assert isinstance(first.model, HFModelRef) and first.model.content is not None
    (folder / "config.json").write_text('{"changed": true}')
    second = filter_config(load_spec(spec), load_spec(spec).spec.stages.filters[0])
    assert second.model is not None and second.model.content != first.model.content
    assert filter_fingerprint(first, "i") != filter_fingerprint(second, "i")


def test_the_comparison_chain_is_prefix_stable_and_depends_on_earlier_images_only() -> None:
    three = list(comparison_chain("folder", ["a", "b", "c"]))
    assert list(comparison_chain("folder", ["a", "b"])) == three[:2]  # a top-up changes no earlier verdict
    assert list(comparison_chain("folder", ["a", "x", "c"]))[:2] == three[:2]
    assert list(comparison_chain("folder", ["a", "x", "c"]))[2] != three[2]
    assert list(comparison_chain("other folder", ["a"])) != three[:1]


def test_the_existing_listing_hash_is_content_not_names(tmp_path: Path) -> None:
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"one")
    (folder / "notes.txt").write_text("not an image")
    first = existing_listing_hash(folder)
    (folder / "x.png").rename(folder / "renamed.png")
    assert existing_listing_hash(folder) == first
    (folder / "y.jpg").write_bytes(b"two")
    assert existing_listing_hash(folder) != first
    assert existing_listing_hash(None) == existing_listing_hash(tmp_path / "missing")


def test_a_duplicate_of_a_duplicate_is_compared_with_kept_images_only() -> None:
    h0 = 0
    h1 = 0b111  # 3 bits from h0: a duplicate of it
    h2 = 0b111_111  # 3 bits from h1, 6 from h0: h1 was not kept, so h2 is
    got = duplicate_verdicts([("i0", h0), ("i1", h1), ("i2", h2)], [], max_hamming=4)
    assert [got[i].kept for i in ("i0", "i1", "i2")] == [True, False, True]
    assert (got["i1"].nearest, got["i1"].nearest_to) == (3, "i0")
    assert got["i0"].nearest is None
    with_existing = duplicate_verdicts([("i0", h0)], [("existing:real.png", 1)], max_hamming=4)
    assert (with_existing["i0"].kept, with_existing["i0"].nearest_to) == (False, "existing:real.png")


# --------------------------------------------------------------------------- replace_rejected


def test_rejected_images_are_replaced_by_units_past_the_target(tmp_path: Path, write_catalog: Any) -> None:
    spec = _spec(tmp_path)
    loaded, fps = _made(spec, write_catalog)
    _reject(loaded.output, [fps[0], fps[2]])
    plan = build_plan(load_spec(spec))
    a = next(c for c in plan.classes if c.name == "a")
    assert (a.target, a.keep, a.create, a.rejected, a.replaced, a.remove) == (4, 4, 2, 2, 2, 0)
    made = [u for u in plan.units_to_create() if u.class_name == "a"]
    assert sorted(u.index for u in made) == [4, 5]
    # the same units a target of 6 has: seeds from (base seed, class, index), deterministic
    raised = compile_class(loaded, dataclasses.replace(loaded.classes["a"], target=6), {})
    assert sorted(u.fingerprint for u in made) == sorted(raised.fingerprints[4:6])
    assert "+2 (+2 to replace 2 rejected)" in render_markdown(plan)
    as_json = {c["class"]: c for c in json.loads(render_json(plan))["classes"]}
    assert as_json["a"]["replace_rejected"] == {"rejected": 2, "added": 2}
    b = next(c for c in plan.classes if c.name == "b")
    assert (b.create, b.replaced) == (0, 0)

    # a rejected top-up is replaced in turn; a person's accept takes a rejection back
    write_catalog(loaded.output, made, dataset="d", run_id="top-up")
    _reject(loaded.output, [min(made, key=lambda u: u.index).fingerprint], minute=1)
    again = next(c for c in build_plan(load_spec(spec)).classes if c.name == "a")
    assert (again.keep, again.create, again.rejected) == (6, 1, 3)
    review = pa.Table.from_pylist(
        [{"fingerprint": fps[0], "class_name": "a", "decision": "accept", "session_id": "s", "created_at": T0}],
        schema=REVIEW_SCHEMA,
    )
    Catalog(loaded.output).append_stage(REVIEW_TABLE, review, "s")
    accepted = next(c for c in build_plan(load_spec(spec)).classes if c.name == "a")
    assert (accepted.rejected, accepted.create, accepted.remove) == (2, 0, 0)


def test_without_replace_rejected_the_units_are_the_targets_and_the_class_is_short(
    tmp_path: Path, write_catalog: Any
) -> None:
    spec = _spec(tmp_path, replace=False)
    loaded, fps = _made(spec, write_catalog)
    before = build_plan(load_spec(spec))
    _reject(loaded.output, [fps[1]])
    after = build_plan(load_spec(spec))
    assert {n: u.fingerprints for n, u in after.units.items()} == {n: u.fingerprints for n, u in before.units.items()}
    a = next(c for c in after.classes if c.name == "a")
    assert (a.create, a.rejected, a.short, a.replaced) == (0, 1, 1, 0)
    assert "(1 short: 1 rejected, replace_rejected is off)" in render_markdown(after)
    # a class can turn it on for itself
    spec.write_text(spec.read_text().replace('prompt: "a {w} 1"', 'prompt: "a {w} 1", replace_rejected: true'))
    on = next(c for c in build_plan(load_spec(spec)).classes if c.name == "a")
    assert (on.create, on.replaced) == (1, 1)


def test_explicit_seeds_are_kept_and_top_ups_take_derived_ones(tmp_path: Path, write_catalog: Any) -> None:
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text().replace('a: {target: 4, prompt: "a {w} 1"}', 'a: {seeds: [1, 2], prompt: "a 1"}'))
    loaded, fps = _made(spec, write_catalog)
    _reject(loaded.output, [fps[0]])
    plan = build_plan(load_spec(spec))
    (top,) = [u for u in plan.units_to_create() if u.class_name == "a"]
    assert top.index == 2 and top.seed not in (1, 2)
    assert [int(s) for s in plan.units["a"].seeds[:2]] == [1, 2]


@pytest.mark.parametrize("kind", ["near_duplicate", "blank"])
def test_filter_units_are_planned_per_image_and_kept_once_recorded(
    tmp_path: Path, write_catalog: Any, kind: str
) -> None:
    spec = _spec(tmp_path, filters=f"- {kind}: {{}}")
    loaded, _fps = _made(spec, write_catalog)
    plan = build_plan(load_spec(spec))
    (stage,) = plan.stages
    assert {(c.stage, c.class_name): (c.create, c.keep) for c in stage.classes} == {
        (f"filters.{kind}", "a"): (4, 0),
        (f"filters.{kind}", "b"): (2, 0),
    }
    rows = [
        {
            "fingerprint": u.image_fingerprint,
            "class_name": u.class_name,
            "filter": kind,
            "config_hash": u.fingerprint,
            "passed": True,
            "value": 1.0,
            "run_id": "r",
            "created_at": T0,
        }
        for u in stage.create
    ]
    Catalog(loaded.output).append_stage(FILTERS_TABLE, pa.Table.from_pylist(rows, schema=FILTERS_SCHEMA), "r")
    (done,) = build_plan(load_spec(spec)).stages
    assert done.total_create == 0 and done.total_keep == 6


def test_a_catalog_with_the_old_near_duplicate_rows_still_reads(tmp_path: Path) -> None:
    """0.1 wrote near_duplicate rows with a `dhash` column and float distances; the new rows sit
    beside them in the same table, and the hashes 0.1 recorded are not taken for phashes."""
    from diffspec.stages.filters import _recorded_hashes

    catalog = Catalog(tmp_path)
    old = pa.table(
        {
            "fingerprint": ["old"],
            "class_name": ["a"],
            "dhash": pa.array([5], pa.int64()),
            "nearest_hamming": pa.array([64.0], pa.float64()),
            "kept": [True],
        }
    )
    catalog.append_stage("near_duplicate", old, "r0")
    new = pa.table(
        {
            "fingerprint": ["new"],
            "filter_fingerprint": ["u"],
            "class_name": ["a"],
            "hash_kind": ["phash"],
            "hash": pa.array([-1], pa.int64()),
            "nearest_hamming": pa.array([None], pa.float64()),
            "nearest_to": pa.array([None], pa.string()),
            "kept": [True],
        }
    )
    catalog.append_stage("near_duplicate", new, "r1")
    assert catalog.read_table("near_duplicate").num_rows == 2
    assert _recorded_hashes(catalog, "phash") == {"new": (1 << 64) - 1}
