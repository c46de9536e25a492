"""A killed run's whole but unrecorded images are recorded by the next run, not made again;
torn or foreign files are made again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_apply_support import check_catalog, one_torch_thread, write_spec  # noqa: F401

from diffspec.catalog.store import Catalog
from diffspec.project import Project
from diffspec.run.writer import WRITE_COUNTER_ENV

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = """
a: {target: 4, prompt: "a photo of a cat"}
b: {target: 4, prompt: "a photo of a {x}", vars: {x: [dog, bird]}}
"""


def test_whole_unrecorded_images_are_adopted_torn_and_foreign_ones_remade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A finished run, as the reference.
    reference = Project(write_spec(tmp_path / "ref", CLASSES))
    assert reference.apply(reference.plan(), progress=False).made == 8
    made = {r["fingerprint"]: r for r in Catalog(reference.output).live_images().to_pylist()}

    # A fresh output where a "killed run" left files but no rows: 3 whole images, one torn
    # (truncated) and one whose provenance names another unit.
    project = Project(write_spec(tmp_path / "run", CLASSES))
    plan = project.plan()
    units = sorted(plan.units_to_create(), key=lambda u: (u.class_name, u.index))
    whole, torn, foreign = units[:3], units[3], units[4]
    for unit in whole:
        target = project.output / unit.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reference.output / made[unit.fingerprint]["path"], target)
    data = (reference.output / made[torn.fingerprint]["path"]).read_bytes()
    (project.output / torn.relpath).parent.mkdir(parents=True, exist_ok=True)
    (project.output / torn.relpath).write_bytes(data[: len(data) // 2])
    (project.output / foreign.relpath).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reference.output / made[units[5].fingerprint]["path"], project.output / foreign.relpath)

    counter = tmp_path / "writes.txt"
    monkeypatch.setenv(WRITE_COUNTER_ENV, str(counter))
    result = project.apply(plan, progress=False)

    assert (result.adopted, result.made, result.failed, result.remaining) == (3, 5, 0, 0)
    assert any("recorded 3 whole images" in line for line in result.log)
    written = set(counter.read_text().split())
    assert written == {u.fingerprint for u in units[3:]}  # nothing adopted was made again
    hashes = check_catalog(project.output, expected=8)  # every row's file exists and matches
    assert set(hashes) == set(made)
    assert all(hashes[u.fingerprint] == made[u.fingerprint]["sha256"] for u in whole)  # kept, not remade
    rows = {r["fingerprint"]: r for r in Catalog(project.output).live_images().to_pylist()}
    for unit in whole:
        assert rows[unit.fingerprint]["seconds"] is None and rows[unit.fingerprint]["batch_size"] is None
        assert rows[unit.fingerprint]["prompt"] == unit.prompt
    assert rows[torn.fingerprint]["seconds"] > 0

    again = project.apply(project.plan(), progress=False)
    assert (again.adopted, again.made) == (0, 0)
