"""`diffspec export`: the catalog's live images as ImageFolder, CSV or YOLO, on a real Parquet
catalog with real PNG files (written here, no model run). The formats read back by their real
consumers (hf, coco, captions-txt), splits and merges: test_export_formats.py."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog
from diffspec.cli import app
from diffspec.errors import DiffspecError, ExportError
from diffspec.project import Project

try:
    from export_support import *  # noqa: F403
except ImportError:  # pragma: no cover - run from the repository root
    from tests.unit.export_support import *  # noqa: F403


# ---- imagefolder --------------------------------------------------------------------------
def test_imagefolder_hard_links_one_folder_per_class_with_metadata(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "export"
    result = project.export("imagefolder", dest)
    assert result.counts == {"zero": 3, "one": 2, "seven": 2} and result.total == 7
    assert (result.linked, result.copied, result.unchanged) == (7, 0, 0)
    assert os.fspath(result) == str(dest)
    images = {p for p in files_under(dest) if p.endswith(".png")}
    assert images == {f"{r['class_name']}/{fp}.png" for fp, r in rows.items()}
    for fp, row in rows.items():
        exported, source = dest / row["class_name"] / f"{fp}.png", project.output / row["path"]
        assert os.stat(exported).st_ino == os.stat(source).st_ino and os.stat(source).st_nlink == 2

    meta = read_csv(dest / "metadata.csv")
    assert [m["class"] for m in meta] == ["zero"] * 3 + ["one"] * 2 + ["seven"] * 2  # spec order
    for m in meta:
        row = rows[m["fingerprint"]]
        assert m["file_name"] == f"{row['class_name']}/{m['fingerprint']}.png"
        assert (m["label"], m["prompt"], int(m["seed"]), m["rejected"]) == (
            row["label"],
            row["prompt"],
            row["seed"],
            "false",
        )
        assert m["sha256"] == row["sha256"] == hashlib.sha256((dest / m["file_name"]).read_bytes()).hexdigest()


def test_copy_makes_independent_files(project: Project, rows: dict[str, Any], tmp_path: Path) -> None:
    dest = tmp_path / "export"
    result = project.export("imagefolder", dest, link=False)
    assert (result.linked, result.copied) == (0, 7)
    for fp, row in rows.items():
        exported, source = dest / row["class_name"] / f"{fp}.png", project.output / row["path"]
        assert os.stat(exported).st_ino != os.stat(source).st_ino and os.stat(source).st_nlink == 1
        assert exported.read_bytes() == source.read_bytes()


def test_link_falls_back_to_copy_across_filesystems(
    project: Project, rows: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    result = project.export("imagefolder", tmp_path / "export")
    assert (result.linked, result.copied) == (0, 7)
    assert all(
        (tmp_path / "export" / r["class_name"] / f"{fp}.png").read_bytes() == (project.output / r["path"]).read_bytes()
        for fp, r in rows.items()
    )


def test_export_again_rewrites_nothing_and_switches_link_mode(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "export"
    project.export("imagefolder", dest, link=False)
    before = {p: (dest / p).stat() for p in files_under(dest)}
    outside = files_under(tmp_path) - {f"export/{p}" for p in before}
    again = project.export("imagefolder", dest, link=False)
    assert (again.copied, again.linked, again.unchanged, again.removed) == (0, 0, 7, 0)
    after = {p: (dest / p).stat() for p in files_under(dest)}
    assert set(after) == set(before)
    assert all((after[p].st_ino, after[p].st_mtime_ns) == (before[p].st_ino, before[p].st_mtime_ns) for p in before)
    assert files_under(tmp_path) - {f"export/{p}" for p in after} == outside

    linked = project.export("imagefolder", dest)  # --link after --copy: the copies become links
    assert (linked.linked, linked.unchanged) == (7, 0)
    assert project.export("imagefolder", dest).unchanged == 7
    copied = project.export("imagefolder", dest, link=False)  # and back: links become copies
    assert copied.copied == 7
    assert all(os.stat(project.output / r["path"]).st_nlink == 1 for r in rows.values())


# ---- rejected, obsolete, missing ----------------------------------------------------------
def test_rejected_images_are_left_out_unless_asked_for(project: Project, rows: dict[str, Any], tmp_path: Path) -> None:
    bad = next(fp for fp, r in rows.items() if r["class_name"] == "zero")
    reject(project, bad)
    dest = tmp_path / "export"
    result = project.export("imagefolder", dest)
    assert result.counts["zero"] == 2 and result.total == 6 and result.skipped_rejected == 1
    assert not (dest / "zero" / f"{bad}.png").exists()
    assert bad not in {m["fingerprint"] for m in read_csv(dest / "metadata.csv")}

    full = project.export("imagefolder", tmp_path / "all", include_rejected=True)
    assert full.total == 7 and full.skipped_rejected == 0
    flags = {m["fingerprint"]: m["rejected"] for m in read_csv(tmp_path / "all" / "metadata.csv")}
    assert flags[bad] == "true" and sum(v == "true" for v in flags.values()) == 1


def test_latest_verdict_counts_and_a_newly_rejected_image_leaves_the_export(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    fp = next(iter(rows))
    dest = tmp_path / "export"
    project.export("imagefolder", dest)
    exported = dest / rows[fp]["class_name"] / f"{fp}.png"
    mine = dest / rows[fp]["class_name"] / "my-own-real-photo.png"  # not ours: never deleted
    mine.write_bytes(png_bytes(99))
    reject(project, fp)
    result = project.export("imagefolder", dest)
    assert result.removed == 1 and not exported.exists() and mine.exists()
    assert (project.output / rows[fp]["path"]).exists()  # the source is untouched
    reject(project, fp, passed=True, run_id="filter-run-2")  # a later verdict passes it again
    result = project.export("imagefolder", dest)
    assert result.total == 7 and exported.exists()


def test_images_the_spec_no_longer_asks_for_are_left_out(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    write_spec(tmp_path, zero=1)
    result = Project(tmp_path / "spec.yaml").export("imagefolder", tmp_path / "export")
    assert result.counts == {"zero": 1, "one": 2, "seven": 2} and result.skipped_obsolete == 2


def test_a_row_whose_file_is_missing_stops_the_export(project: Project, rows: dict[str, Any], tmp_path: Path) -> None:
    gone = next(iter(rows.values()))
    (project.output / gone["path"]).unlink()
    dest = tmp_path / "export"
    with pytest.raises(ExportError, match=r"1 catalog image is missing on disk: .*" + gone["fingerprint"]):
        project.export("imagefolder", dest)
    assert not dest.exists()  # checked before anything is written


def test_a_row_pointing_outside_the_output_root_is_refused(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "secret.png").write_bytes(png_bytes(1))
    Catalog(project.output).append_images(
        [ImageRecord(fingerprint=next(iter(rows)), class_name="zero", path="../secret.png")], "run-0"
    )  # read first: wins
    with pytest.raises(ExportError, match="outside"):
        project.export("imagefolder", tmp_path / "export")


def test_unknown_format_and_bad_destinations(project: Project, rows: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(
        ExportError, match="unknown export format 'tiff'; choose one of: imagefolder, yolo, hf, coco, csv"
    ):
        project.export("tiff", tmp_path / "export")
    assert issubclass(ExportError, DiffspecError)
    for dest in (project.output, tmp_path, project.output / "images" / "x", project.output / "catalog"):
        with pytest.raises(ExportError, match="destination"):
            project.export("imagefolder", dest)
    assert Catalog(project.output).live_images().num_rows == 7


def test_an_empty_catalog_says_to_apply_first(project: Project, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no images yet; run `diffspec apply"):
        project.export("imagefolder", tmp_path / "export")


# ---- csv ------------------------------------------------------------------------------
def test_csv_lists_absolute_paths_with_provenance(project: Project, rows: dict[str, Any], tmp_path: Path) -> None:
    result = project.export("csv", tmp_path / "lists" / "digits.csv")
    assert result.path == tmp_path / "lists" / "digits.csv" and result.total == 7
    table = read_csv(result.path)
    assert len(table) == 7
    for line in table:
        assert Path(line["path"]).is_absolute() and Path(line["path"]).read_bytes()
        assert Path(line["path"]) == (project.output / rows[line["fingerprint"]]["path"]).resolve()
        assert line["class"] == rows[line["fingerprint"]]["class_name"]
    (tmp_path / "folder").mkdir()
    assert project.export("csv", tmp_path / "folder").path == tmp_path / "folder" / "images.csv"
    assert len(read_csv(tmp_path / "folder" / "images.csv")) == 7


# ---- yolo ---------------------------------------------------------------------------------
SEGMENT = ""  # the labels' contract is the segment table; the stage that writes it arrives in 0.2


def test_yolo_before_any_segment_output_says_so_and_writes_no_empty_labels(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="holds none .* no empty label files were written"):
        project.export("yolo", tmp_path / "yolo")
    assert not (tmp_path / "yolo").exists()


def test_yolo_writes_labels_from_the_segment_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ruamel.yaml

    monkeypatch.chdir(tmp_path)
    project = Project(write_spec(tmp_path, SEGMENT))
    rows = record_images(project)
    zero = [fp for fp, r in rows.items() if r["class_name"] == "zero"]
    seven = next(fp for fp, r in rows.items() if r["class_name"] == "seven")
    segments = pa.table(
        {
            "fingerprint": [zero[0], zero[0], zero[1], seven],
            "class_name": [None, "one", None, None],
            "polygon": pa.array([[0.1, 0.1, 0.5, 0.1, 0.3, 0.6], None, None, None], pa.list_(pa.float64())),
            "box": pa.array([None, [0.5, 0.5, 0.2, 0.4], None, [0.25, 0.75, 0.5, 0.5]], pa.list_(pa.float64())),
        }
    )
    Catalog(project.output).append_stage("segment", segments, "seg-run")
    dest = tmp_path / "yolo"
    result = project.export("yolo", dest)
    assert result.counts == {"zero": 2, "one": 0, "seven": 1} and result.skipped_unlabelled == 4
    assert (
        dest / "labels" / "train" / f"{zero[0]}.txt"
    ).read_text() == "0 0.1 0.1 0.5 0.1 0.3 0.6\n1 0.5 0.5 0.2 0.4\n"
    assert (dest / "labels" / "train" / f"{zero[1]}.txt").read_text() == ""  # looked at, nothing found
    assert (dest / "labels" / "train" / f"{seven}.txt").read_text() == "2 0.25 0.75 0.5 0.5\n"
    assert {p for p in files_under(dest) if p.startswith("images/")} == {
        f"images/train/{fp}.png" for fp in (*zero[:2], seven)
    }
    assert (dest / "classes.txt").read_text() == "zero\none\nseven\n"
    data = ruamel.yaml.YAML(typ="safe").load((dest / "data.yaml").read_text())
    assert data["names"] == {0: "zero", 1: "one", 2: "seven"} and data["nc"] == 3
    assert data["train"] == "images/train" and Path(data["path"]) == dest.resolve()

    Catalog(project.output).append_stage(
        "segment",
        pa.table({"fingerprint": [zero[0]], "class_name": ["nine"], "box": [[0.5, 0.5, 0.1, 0.1]]}),
        "seg-run-2",
    )
    with pytest.raises(ExportError, match="names class 'nine', which is not a class of the spec"):
        project.export("yolo", dest)


# ---- CLI ----------------------------------------------------------------------------------
def test_cli_prints_counts_per_class_and_honours_include_rejected(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    reject(project, next(fp for fp, r in rows.items() if r["class_name"] == "one"))
    runner = CliRunner()
    result = runner.invoke(app, ["export", "spec.yaml", "exported", "--format", "imagefolder", "--copy"])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.replace("│", " ").split()) for line in result.stdout.splitlines()]
    assert "zero 3" in lines and "one 1" in lines and "seven 2" in lines and "total 6" in lines
    assert "exported 6 images (imagefolder) to exported (6 copied)" in lines
    assert any("1 rejected by filters" in line for line in lines)
    assert len(files_under(tmp_path / "exported")) == 6 + 2  # images, metadata.csv, manifest

    result = runner.invoke(app, ["export", "spec.yaml", "exported", "--include-rejected", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"] == {"zero": 3, "one": 2, "seven": 2} and data["total"] == 7
    assert (data["linked"], data["skipped"]["rejected"]) == (7, 0)


def test_cli_errors_are_one_line_without_traceback(project: Project, rows: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["export", "spec.yaml", "exported", "--format", "tiff"])
    assert result.exit_code == 1
    assert "unknown export format 'tiff'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["export", "spec.yaml", "exported", "--format", "yolo"])
    assert result.exit_code == 1 and "holds none" in result.output and "Traceback" not in result.output
