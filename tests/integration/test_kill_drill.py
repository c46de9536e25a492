"""Kill drill (short): `diffspec apply` as a subprocess, SIGKILLed at random moments and
restarted, then finished. The catalog must end exactly right: the planned rows, each
fingerprint once, every file present with its sha256, no temp files, and no more image
writes than planned + kills x batch size. The full drill is `python bench/kill_drill.py`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from test_apply_support import tiny_sd

REPO = Path(__file__).resolve().parents[2]


def _drill_module():
    spec = importlib.util.spec_from_file_location("kill_drill", REPO / "bench" / "kill_drill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_apply_survives_sigkill_at_random_moments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # robust timing on a shared 2-core machine
    drill = _drill_module()
    f = drill.run_drill(
        tmp_path / "drill",
        # Enough work that a run cannot finish inside one kill window on a fast machine (48 units
        # once ended before the second kill and left only one).
        units=96,
        kills=4,
        batch=4,
        size=32,
        steps=4,
        seed=1,
        after_write=(0.0, 0.5),
        model=tiny_sd(),
        verbose=True,
    )
    print(
        f"\nkill drill: {f['kills']} kills, {f['planned']} planned, {f['rows']} rows, "
        f"{f['image_writes']} image writes (bound {f['write_bound']}), {f['seconds']}s"
    )
    assert f["kills"] == 4 or f["finished_before_all_kills"]
    assert f["kills"] >= 2
    assert f["rows"] == f["planned"] == f["unique_fingerprints"] == f["png_files"]
    assert not f["missing_files"] and not f["sha_mismatch"] and not f["temp_files"]
    assert f["image_writes"] <= f["write_bound"]
    assert f["left_to_make"] == 0
    assert f["ok"]


def test_apply_with_the_segment_stage_survives_sigkill_in_the_stage(tmp_path: Path, monkeypatch) -> None:
    """Kills land in the image phase, in start-up and while the segment stage records its
    batches: every image ends with its segment unit once, made by one run, every row whole."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    drill = _drill_module()
    f = drill.run_drill(
        tmp_path / "drill",
        units=60,
        kills=4,
        batch=4,
        size=32,
        steps=2,
        seed=2,
        after_write=(0.0, 0.8),
        model=tiny_sd(),
        verbose=True,
        stages=True,
    )
    print(f"\nkill drill with stages: {f['kills']} kills, {f['segment_units']} segment units, {f['seconds']}s")
    assert f["kills"] >= 2
    assert f["segment_units"] == f["planned"] and f["images_without_unit"] == 0
    assert f["units_made_twice"] == 0 and f["duplicate_rows"] == 0
    assert f["rows_without_image"] == 0 and f["undecodable_masks"] == 0
    assert f["ok"]


def test_apply_with_the_filters_survives_sigkill_in_the_stage(tmp_path: Path, monkeypatch) -> None:
    """Kills land in the image phase, in start-up and while the filters record their batches:
    every verdict the spec asks for ends recorded, none without its image, and at most a batch
    per kill is measured again."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    drill = _drill_module()
    f = drill.run_drill(
        tmp_path / "drill",
        units=40,
        kills=4,
        batch=4,
        size=32,
        steps=2,
        seed=3,
        after_write=(0.0, 0.8),
        model=tiny_sd(),
        verbose=True,
        filters=True,
    )
    print(f"\nkill drill with filters: {f['kills']} kills, {f['filter_units']} verdicts, {f['seconds']}s")
    assert f["kills"] >= 2
    assert f["filter_units"] == 3 * f["planned"] and f["filter_units_left"] == 0
    assert f["verdicts_without_image"] == 0
    assert f["verdicts_measured_twice"] <= f["measured_twice_bound"]
    assert f["ok"]
