"""apply on a tiny real diffusers pipeline and a real Parquet/DuckDB catalog: makes exactly the
plan, records rows that match the files, resumes, refuses a second concurrent apply, prunes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_apply_support import check_catalog, one_torch_thread, write_spec  # noqa: F401

from diffspec.catalog.lock import OutputLock
from diffspec.catalog.query import run_query
from diffspec.catalog.store import Catalog
from diffspec.errors import LockError
from diffspec.project import Project

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = """
a: {target: 6, prompt: "a photo of a cat"}
b: {target: 4, prompt: "a photo of a {x}", vars: {x: [dog, bird]}}
"""


def test_apply_makes_exactly_the_plan_then_nothing_then_exactly_the_raise(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CLASSES)
    project = Project(spec)
    plan = project.plan()
    assert plan.total_create == 10
    result = project.apply(plan, progress=False)
    assert (result.made, result.failed, result.skipped, result.interrupted) == (10, 0, 0, False)
    assert result.phase == "finished"
    output = project.output
    hashes = check_catalog(output, expected=10)
    assert set(hashes) == {u.fingerprint for u in plan.units_to_create()}

    # rows carry everything the catalog promises
    rows = Catalog(output).live_images().to_pylist()
    row = rows[0]
    assert row["run_id"] == result.run_id and row["device"] == "cpu" and row["dataset"] == "tinyset"
    assert row["canonical"].startswith("diffspec-unit/v1\n")
    assert json.loads(row["scheduler_config"])["_class_name"] == "DDIMScheduler"
    assert row["batch_size"] in (2, 4) and row["seconds"] > 0 and row["created_at"] is not None
    assert {r["path"] for r in rows} == {f"images/{r['class_name']}/{r['fingerprint']}.png" for r in rows}
    # one compacted part per run
    assert len(Catalog(output).parts("images")) == 1

    # PNG provenance in text chunks
    from PIL import Image

    with Image.open(output / row["path"]) as im:
        meta = im.text
        assert im.size == (32, 32)
    assert meta["prompt"] == row["prompt"] and meta["seed"] == str(row["seed"])
    assert meta["fingerprint"] == row["fingerprint"] and meta["negative_prompt"] == "blurry"
    assert meta["model_source"] == row["model_source"] and meta["steps"] == "2" and meta["scheduler"] == "ddim"
    assert json.loads(meta["scheduler_config"]) == json.loads(row["scheduler_config"])
    assert "diffspec_version" in meta

    # the run is recorded: started + finished, versions, counts
    runs = run_query(
        Catalog(output),
        f"SELECT phase, planned, made, failed, versions, log FROM runs WHERE run_id = '{result.run_id}'",
    ).to_pylist()
    assert runs[0]["phase"] == "finished" and runs[0]["made"] == 10 and runs[0]["planned"] == 10
    assert "torch" in json.loads(runs[0]["versions"]) and isinstance(json.loads(runs[0]["log"]), list)
    counts = dict(
        run_query(Catalog(output), "SELECT class_name, count(*) AS n FROM images GROUP BY 1 ORDER BY 1")
        .to_pylist()[i]
        .values()
        for i in range(2)
    )
    assert counts == {"a": 6, "b": 4}

    # a second apply makes nothing
    again = project.apply(progress=False)
    assert again.made == 0 and again.failed == 0
    assert check_catalog(output, expected=10) == hashes

    # raising a target by 5 makes exactly 5 more and keeps the first ones
    spec.write_text(spec.read_text().replace("target: 6", "target: 11"))
    project = Project(spec)
    plan = project.plan()
    assert plan.total_create == 5
    more = project.apply(plan, progress=False)
    assert more.made == 5
    after = check_catalog(output, expected=15)
    assert {fp: h for fp, h in after.items() if fp in hashes} == hashes


def test_plan_file_applies_once_and_resumes(tmp_path: Path) -> None:
    from diffspec.plan.planfile import load_plan, save_plan

    spec = write_spec(tmp_path, CLASSES)
    plan_file = tmp_path / "plan.json"
    save_plan(Project(spec).plan(), plan_file)

    # an interrupted first run (max_units), then the same plan file: makes only the rest
    first = Project(spec).apply(load_plan(plan_file), progress=False, max_units=3)
    assert first.made == 3 and first.interrupted is False
    second = Project(spec).apply(load_plan(plan_file), progress=False)
    assert second.made == 7
    third = Project(spec).apply(load_plan(plan_file), progress=False)
    assert third.made == 0
    check_catalog(Project(spec).output, expected=10)

    # a Plan object made before a run re-checks the catalog at start: skips what exists
    spec2 = write_spec(tmp_path / "two", CLASSES)
    stale = Project(spec2).plan()
    Project(spec2).apply(stale, progress=False, max_units=4)
    resumed = Project(spec2).apply(stale, progress=False)
    assert (resumed.planned, resumed.skipped, resumed.made) == (10, 4, 6)
    check_catalog(Project(spec2).output, expected=10)

    # also through the CLI: `diffspec apply plan.json` after it is done makes nothing
    from typer.testing import CliRunner

    from diffspec.cli import app

    res = CliRunner().invoke(app, ["apply", str(plan_file), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["made"] == 0


def test_a_second_apply_on_the_same_output_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CLASSES)
    project = Project(spec)
    with OutputLock(project.output, "someone-else"):
        with pytest.raises(LockError, match="another apply is running on .*someone-else"):
            project.apply(progress=False)
    assert not Catalog(project.output).parts("images")
    # the lock is gone with its holder: the next apply runs
    assert project.apply(progress=False, max_units=1).made == 1


def test_status_gc_and_prune(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CLASSES)
    project = Project(spec)
    project.apply(progress=False)
    output = project.output
    status = {s.name: s for s in Project(spec).status().classes}
    assert (status["a"].target, status["a"].done, status["a"].remaining, status["a"].obsolete) == (6, 6, 0, 0)
    assert status["a"].quality is None and status["a"].rejected == 0

    # stage tables feed rejected / quality when they exist
    import pyarrow as pa

    live = Catalog(output).live_images(["fingerprint", "class_name"]).to_pylist()
    a_fps = [r["fingerprint"] for r in live if r["class_name"] == "a"]
    cat = Catalog(output)
    cat.append_stage(
        "filters",
        pa.table(
            {
                "fingerprint": a_fps * 2,
                "filter": ["clip"] * 6 + ["dup"] * 6,
                "passed": [False, True, True, True, True, False] + [False] + [True] * 5,
            }
        ),
        "t1",
    )
    cat.append_stage(
        "classifier", pa.table({"fingerprint": a_fps, "recognised": [True, True, False, True, True, True]}), "t1"
    )
    status = {s.name: s for s in Project(spec).status().classes}
    assert status["a"].rejected == 2 and status["a"].quality == pytest.approx(5 / 6)
    assert status["b"].rejected == 0 and status["b"].quality is None
    assert status["a"].to_dict()["class"] == "a"

    # lower a target: the surplus is obsolete; apply without --prune deletes nothing
    spec.write_text(spec.read_text().replace("target: 6", "target: 4"))
    project = Project(spec)
    assert {s.name: s.obsolete for s in project.status().classes} == {"a": 2, "b": 0}
    project.apply(progress=False)
    check_catalog(output, expected=10)
    dry = project.gc(dry_run=True)
    assert dry.count == 2 and dry.bytes > 0
    check_catalog(output, expected=10)
    done = project.gc()
    assert done.count == 2 and done.bytes == dry.bytes
    assert not any((output / p).exists() for p in done.paths)
    check_catalog(output, expected=8)
    assert {s.name: s.obsolete for s in Project(spec).status().classes} == {"a": 0, "b": 0}

    # apply --prune does the same as gc
    spec.write_text(spec.read_text().replace("a: {target: 4", "a: {target: 3"))
    result = Project(spec).apply(progress=False, prune=True)
    assert result.removed == 1
    check_catalog(output, expected=7)

    # raising it back re-makes the pruned images (same fingerprints), and they are live again
    spec.write_text(spec.read_text().replace("a: {target: 3", "a: {target: 6"))
    assert Project(spec).plan().total_create == 3
    assert Project(spec).apply(progress=False).made == 3
    check_catalog(output, expected=10, raw_unique=False)
    assert Project(spec).plan().total_create == 0


def test_leftover_temp_files_of_a_killed_run_are_cleaned_and_unrecorded_files_overwritten(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CLASSES)
    project = Project(spec)
    plan = project.plan()
    unit = next(iter(plan.units_to_create()))
    target = project.output / unit.relpath
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a png from a killed run")
    (target.parent / f".{target.name}.tmp-123-abcd").write_bytes(b"partial")
    (project.output / "catalog" / "images").mkdir(parents=True)
    (project.output / "catalog" / "images" / ".part-x.parquet.tmp-123-abcd").write_bytes(b"partial")
    result = project.apply(plan, progress=False)
    assert result.made == 10
    assert any("temp files" in line for line in result.log)
    check_catalog(project.output, expected=10)


def test_writing_outside_the_output_root_is_refused(tmp_path: Path) -> None:
    from diffspec.errors import DiffspecError
    from diffspec.run.writer import check_inside

    assert check_inside(tmp_path, "images/a/x.png") == (tmp_path / "images/a/x.png").resolve()
    with pytest.raises(DiffspecError, match="outside the output root"):
        check_inside(tmp_path, "images/../../etc/x.png")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "evil").symlink_to("/tmp")
    with pytest.raises(DiffspecError, match="outside the output root"):
        check_inside(tmp_path, "images/evil/x.png")


def test_a_tuned_run_records_its_choice_and_the_size_of_every_image(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, 'a: {target: 24, prompt: "a photo of a cat"}', max_batch=4, extra_budget="tune_batch: true"
    )
    project = Project(spec)
    plan = project.plan()
    assert "tuned" in plan.execution.describe()
    result = project.apply(plan, progress=False)
    assert result.made == 24 and result.failed == 0
    tuned = [m for m in result.log if "batch size" in m and " of 4, 2, 1 " in m]
    assert len(tuned) == 1, result.log
    chosen = int(tuned[0].split("batch size ")[1].split()[0])
    sizes = [r["batch_size"] for r in Catalog(project.output).live_images(["batch_size"]).to_pylist()]
    # a warm-up and one trial at each of 4, 2 and 1, then the choice for the rest
    assert set(sizes) <= {4, 2, 1} and sizes.count(chosen) >= 12
    check_catalog(project.output, expected=24)
