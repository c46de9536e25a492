"""A damaged catalog, through the CLI: readers refuse damage with the file named (never a
traceback, never a silent partial read), `check` lists every problem, `check --repair`
quarantines what is damaged and rebuilds rows from the image files, and the next apply makes
exactly what was truly lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_support import PLANNED, applied, audit, cli

from diffspec.catalog.store import Catalog

pytest.importorskip("torch")

READERS = (("status",), ("plan",), ("query", "SELECT count(*) AS n FROM images"), ("apply", "-q"))


def _reader(args: tuple[str, ...], spec: Path) -> list[str | Path]:
    if args[0] == "query":
        return ["query", args[1], "--spec", spec]
    return [args[0], spec, *args[1:]]


def _image_part(output: Path) -> Path:
    parts = Catalog(output).parts("images")
    assert len(parts) == 1
    return parts[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"\x5a" * 64  # inside the data pages, footer intact
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _garble], ids=["truncated", "garbage-bytes"])
def test_a_damaged_part_is_refused_by_every_reader_then_repaired_from_the_images(tmp_path: Path, damage) -> None:
    spec = applied(tmp_path / "run")
    output = spec.parent / "out"
    part = _image_part(output)
    damage(part)
    for args in READERS:
        ran = cli(*_reader(args, spec))
        assert not ran.traceback, (args, ran.err)
        if ran.rc == 0:
            # plan and apply read only the fingerprint and class columns: garbage in another
            # column's pages cannot change their answer, which must then be the right one.
            assert damage is _garble and args[0] in ("plan", "apply"), (args, ran.out)
            assert "No changes" in ran.out or "made 0" in ran.out, (args, ran.out)
            continue
        assert ran.rc == 1 and "damaged catalog part" in ran.err and part.name in ran.err, (args, ran.err)
    assert not list((output / "images").rglob("*.tmp-*"))  # apply stopped before writing anything

    found = cli("check", spec)
    assert found.rc == 1 and not found.traceback
    assert "damaged_part" in found.out and part.name in found.out
    assert f"{PLANNED} whole images" in found.out  # their files are all there, only the rows are gone

    fixed = cli("check", spec, "--repair")
    assert fixed.rc == 0, fixed.err
    assert (output / "catalog" / "quarantine" / "images" / part.name).is_file()  # kept, not deleted
    assert not part.exists()
    assert f"{PLANNED} images recorded from their files; the next apply makes 0" in fixed.out
    assert audit(output) == {"rows": PLANNED, "duplicated": 0, "corrupt": 0, "temp_files": 0}
    again = cli("apply", spec, "-q")
    assert again.rc == 0 and "made 0" in again.out, again.out + again.err
    assert cli("check", spec).rc == 0


def test_lost_and_garbage_images_are_reported_then_made_again_exactly(tmp_path: Path) -> None:
    spec = applied(tmp_path / "run")
    output = spec.parent / "out"
    rows = Catalog(output).live_images(["fingerprint", "path"]).to_pylist()
    gone, garbage = output / rows[0]["path"], output / rows[1]["path"]
    gone.unlink()
    garbage.write_bytes(b"not a png at all")

    status = cli("status", spec)
    assert status.rc == 0 and "2 images counted as done are missing or damaged" in status.err
    export = cli("export", spec, tmp_path / "exported")
    assert export.rc == 1 and not export.traceback and "nothing was exported" in export.err
    assert not (tmp_path / "exported" / "one").exists() and not (tmp_path / "exported" / "zero").exists()

    found = cli("check", spec, "--json")
    assert found.rc == 1
    import json

    problems = {p["path"]: p["kind"] for p in json.loads(found.out)["problems"]}
    assert problems == {rows[0]["path"]: "missing_image", rows[1]["path"]: "damaged_image"}

    fixed = cli("check", spec, "--repair")
    assert fixed.rc == 0 and "the next apply makes 2" in fixed.out, fixed.out
    assert (output / "catalog" / "quarantine" / rows[1]["path"]).read_bytes() == b"not a png at all"
    again = cli("apply", spec, "-q")
    assert again.rc == 0 and "made 2" in again.out, again.out + again.err
    assert audit(output) == {"rows": PLANNED, "duplicated": 0, "corrupt": 0, "temp_files": 0}
    assert cli("check", spec).rc == 0
    assert cli("export", spec, tmp_path / "exported").rc == 0


def test_a_damaged_runs_part_loses_history_not_images(tmp_path: Path) -> None:
    spec = applied(tmp_path / "run")
    output = spec.parent / "out"
    run_part = Catalog(output).parts("runs")[0]
    run_part.write_bytes(b"PAR1 garbage PAR1")
    ran = cli("query", "SELECT count(*) FROM runs", "--spec", spec)
    assert ran.rc == 1 and run_part.name in ran.err and not ran.traceback
    fixed = cli("check", spec, "--repair")
    assert fixed.rc == 0 and "history of those runs is gone" in fixed.out
    assert audit(output)["rows"] == PLANNED
    assert cli("query", "SELECT count(*) FROM runs", "--spec", spec).rc == 0
