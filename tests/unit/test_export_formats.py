"""Exports read back by their real consumers (datasets' imagefolder for hf, pycocotools for coco),
the train/val/test split by fingerprint, captions-txt, and the imagefolder merge into an existing
dataset folder, on a real Parquet catalog with real PNG files (no model run)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from diffspec.catalog.store import Catalog
from diffspec.cli import app
from diffspec.errors import ExportError
from diffspec.export.dest import MANIFEST
from diffspec.export.split import Split, unit_interval
from diffspec.project import Project
from diffspec.stages.masks import rle_encode, rle_to_string

try:
    from export_support import *  # noqa: F403
except ImportError:  # pragma: no cover - run from the repository root
    from tests.unit.export_support import *  # noqa: F403

SPEC_CLASSES = ["zero", "one", "seven"]  # spec order, not alphabetical


def fingerprints(n: int, tag: str = "") -> list[str]:
    return [hashlib.sha256(f"{tag}{i}".encode()).hexdigest() for i in range(n)]


# ---- the split rule ----------------------------------------------------------------------
def test_an_image_never_changes_split_when_the_dataset_grows_or_shrinks() -> None:
    split = Split(val=0.2, test=0.1)
    first = {fp: split.of(fp) for fp in fingerprints(2000)}
    grown = {fp: split.of(fp) for fp in fingerprints(2000) + fingerprints(3000, "more")}
    assert all(grown[fp] == place for fp, place in first.items())
    shares = {name: sum(v == name for v in first.values()) / len(first) for name in ("train", "val", "test")}
    assert abs(shares["val"] - 0.2) < 0.03 and abs(shares["test"] - 0.1) < 0.03 and abs(shares["train"] - 0.7) < 0.03


def test_raising_a_fraction_only_moves_images_out_of_train() -> None:
    fps = fingerprints(3000)
    small, more_val, more_test = Split(val=0.1, test=0.1), Split(val=0.2, test=0.1), Split(val=0.1, test=0.25)
    for bigger in (more_val, more_test):
        moved = [(small.of(fp), bigger.of(fp)) for fp in fps if small.of(fp) != bigger.of(fp)]
        assert moved and all(before == "train" for before, _ in moved)
    assert all(small.of(fp) == "val" for fp in fps if unit_interval(fp) < 0.1)


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [
        (-0.1, 0.0, "split val must be a fraction in"),
        (0.0, 1.0, "split test must be a fraction in"),
        (0.6, 0.4, "must leave images for train"),
        (0.0, 0.0, "needs val or test above 0"),
        (float("nan"), 0.0, "split val must be a fraction"),
    ],
)
def test_bad_fractions_are_clear_errors(val: float, test: float, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        Split(val=val, test=test)


@pytest.mark.parametrize("fmt", ["imagefolder", "csv", "captions", "captions-txt"])
def test_a_split_is_refused_where_the_format_has_no_place_for_one(
    project: Project, rows: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    with pytest.raises(ExportError, match=f"--format {fmt} has no train/val/test layout"):
        project.export(fmt, tmp_path / "exported", split=0.2)
    assert not (tmp_path / "exported").exists()


# ---- hf: datasets' imagefolder -------------------------------------------------------------
def load_hf(dest: Path, cache: Path) -> Any:
    datasets = pytest.importorskip("datasets")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    return datasets.load_dataset("imagefolder", data_dir=str(dest), cache_dir=str(cache))


def test_hf_split_loads_with_a_class_label_of_the_spec_classes(
    project: Project, rows: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dropped = next(fp for fp, r in rows.items() if r["class_name"] == "one")
    review(project, dropped, "reject")
    split = Split(val=0.4)
    dest = tmp_path / "hf"
    result = project.export("hf", dest, split=split)
    expected = {"train": [], "val": []}
    for fp in rows:
        if fp != dropped:
            expected[split.of(fp)].append(fp)
    assert expected["train"] and expected["val"]  # these fingerprints put images in both
    assert result.splits == {"train": len(expected["train"]), "val": len(expected["val"])}

    loaded = load_hf(dest, tmp_path / "hf-cache")
    assert set(loaded) == {"train", "validation"}
    label = loaded["train"].features["label"]
    assert type(label).__name__ == "ClassLabel" and label.names == SPEC_CLASSES
    for name, hf_name in (("train", "train"), ("val", "validation")):
        got = loaded[hf_name]
        assert sorted(list(got["fingerprint"])) == sorted(expected[name])
        for example in got:
            row = rows[example["fingerprint"]]
            assert label.int2str(example["label"]) == example["class"] == row["class_name"]
            assert example["prompt"] == row["prompt"] and example["seed"] == row["seed"]
            assert example["image"].size == (8, 8) and example["label_text"] == row["label"]
    assert dropped not in list(loaded["train"]["fingerprint"]) + list(loaded["validation"]["fingerprint"])


def test_hf_without_a_split_is_one_train_split(
    project: Project, rows: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    project.export("hf", tmp_path / "hf")
    loaded = load_hf(tmp_path / "hf", tmp_path / "hf-cache")
    assert list(loaded) == ["train"] and loaded["train"].num_rows == 7
    assert loaded["train"].features["label"].names == SPEC_CLASSES

    split = Split(val=0.4)  # split the same folder afterwards: the held-out images move, nothing is left twice
    result = project.export("hf", tmp_path / "hf", split=split)
    images = {p for p in files_under(tmp_path / "hf") if p.endswith(".png")}
    folder = {"train": "train", "val": "validation"}
    assert images == {f"{folder[split.of(fp)]}/{r['class_name']}/{fp}.png" for fp, r in rows.items()}
    assert result.removed == result.splits["val"] > 0


# ---- captions-txt --------------------------------------------------------------------------
def test_captions_txt_puts_each_prompt_beside_its_image(project: Project, rows: dict[str, Any], tmp_path: Path) -> None:
    dropped = next(iter(rows))
    review(project, dropped, "reject")
    dest = tmp_path / "lora"
    result = project.export("captions-txt", dest)
    assert result.total == 6
    images = sorted(p for p in dest.rglob("*.png"))
    assert len(images) == 6
    for image in images:
        row = rows[image.stem]
        assert image.parent.name == f"1_{row['class_name']}"  # kohya's <repeats>_<name>
        assert image.with_suffix(".txt").read_text(encoding="utf-8") == " ".join(row["prompt"].split())
        assert PNG.open(image).size == (8, 8)
    assert not any(dropped in p.name for p in dest.rglob("*"))


def test_a_caption_is_the_prompt_as_words_without_weighting_syntax() -> None:
    from diffspec.export.captions_txt import caption_text

    assert caption_text("a (burnt:1.3)  pizza, \\(tasty\\) [soft] crust") == "a burnt pizza, (tasty) soft crust"
    assert caption_text("an (unbalanced bracket") == "an (unbalanced bracket"


# ---- coco (pycocotools) --------------------------------------------------------------------
def _square_mask(i: int) -> np.ndarray:
    mask = np.zeros((8, 8), dtype=bool)
    mask[1 + i % 3 : 5 + i % 3, 2 : 6 + i % 2] = True
    return mask


def test_coco_is_read_by_pycocotools_and_keeps_rejected_images_out(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    coco_api = pytest.importorskip("pycocotools.coco")
    mask_api = pytest.importorskip("pycocotools.mask")
    fps = list(rows)
    masks = {fp: _square_mask(i) for i, fp in enumerate(fps)}
    table = pa.table(
        {
            "fingerprint": fps + [fps[0]],
            "class_name": [rows[fp]["class_name"] for fp in fps] + [rows[fps[0]]["class_name"]],
            "instance": list(range(len(fps))) + [None],
            "rle": [rle_to_string(rle_encode(masks[fp])) for fp in fps] + [None],
            "score": [0.5] * len(fps) + [None],
            "width": [8] * (len(fps) + 1),
            "height": [8] * (len(fps) + 1),
            "kept": [i != 1 for i in range(len(fps))] + [None],  # fps[1]'s only mask was dropped
            "run_id": ["seg"] * (len(fps) + 1),
        }
    )
    Catalog(project.output).append_stage("segment", table, "seg")
    review(project, fps[2], "reject")
    dest = tmp_path / "coco"
    result = project.export("coco", dest)
    assert result.total == 6 and result.skipped_rejected == 1
    coco = coco_api.COCO(str(dest / "annotations" / "instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == SPEC_CLASSES
    assert len(coco.getImgIds()) == 6  # fps[1] is listed with no annotation
    assert len(coco.getAnnIds()) == 5  # kept masks of the images that went out
    by_fp = {img["fingerprint"]: img for img in coco.loadImgs(coco.getImgIds())}
    assert fps[2] not in by_fp and coco.getAnnIds(imgIds=[by_fp[fps[1]]["id"]]) == []
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        decoded = coco.annToMask(ann)
        assert decoded.shape == PNG.open(dest / "train" / image["file_name"]).size[::-1]
        assert (decoded.astype(bool) == masks[image["fingerprint"]]).all()
        assert ann["bbox"] == mask_api.toBbox(coco.annToRLE(ann)).tolist()
        assert ann["area"] == int(mask_api.area(coco.annToRLE(ann))) and ann["iscrowd"] == 0
        assert coco.loadCats(ann["category_id"])[0]["name"] == rows[image["fingerprint"]]["class_name"]


def test_coco_without_segment_output_says_what_to_do(project: Project, rows: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(
        ExportError, match=r"holds no segment stage output; nothing was written.*add `stages: \{segment"
    ):
        project.export("coco", tmp_path / "coco")
    assert not (tmp_path / "coco").exists()


# ---- imagefolder --merge (the pizza seed's "integrate") -----------------------------------
def their_dataset(folder: Path) -> None:
    """A dataset folder diffspec did not write: a class folder of ours, one of theirs only, a
    metadata.csv and a README."""
    (folder / "zero").mkdir(parents=True)
    (folder / "zero" / "real_0001.png").write_bytes(png_bytes(200))
    (folder / "zero" / "real_0002.png").write_bytes(png_bytes(201))
    (folder / "eight").mkdir()
    (folder / "eight" / "real_0003.png").write_bytes(png_bytes(202))
    (folder / "metadata.csv").write_text("file_name,label\nzero/real_0001.png,zero\n", encoding="utf-8")
    (folder / "README.md").write_text("our real digits\n", encoding="utf-8")


def stat_tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
    }


def test_merge_adds_ours_and_leaves_every_file_of_theirs_byte_identical(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "dataset"
    their_dataset(dest)
    theirs = sha256_tree(dest)

    result = project.export("imagefolder", dest, merge=True)
    assert result.total == 7 and result.linked == 7
    after = sha256_tree(dest)
    assert {k: after[k] for k in theirs} == theirs  # every file of theirs, byte for byte
    ours = set(after) - set(theirs)
    assert ours == {f"{r['class_name']}/{fp}.png" for fp, r in rows.items()} | {"diffspec-metadata.csv", MANIFEST}
    meta = read_csv(dest / "diffspec-metadata.csv")
    assert sorted(m["file_name"] for m in meta) == sorted(p for p in ours if p.endswith(".png"))

    before = stat_tree(dest)
    again = project.export("imagefolder", dest, merge=True)
    assert (again.linked, again.copied, again.removed, again.unchanged) == (0, 0, 0, 7)
    assert stat_tree(dest) == before  # not a byte written, not a file renamed

    gone = next(fp for fp, r in rows.items() if r["class_name"] == "zero")
    review(project, gone, "reject")
    third = project.export("imagefolder", dest, merge=True)
    assert third.removed == 1 and not (dest / "zero" / f"{gone}.png").exists()
    final = sha256_tree(dest)
    assert {k: final[k] for k in theirs} == theirs and (dest / "eight").is_dir()


def test_a_file_of_theirs_at_one_of_our_paths_stops_the_merge_before_any_write(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "dataset"
    their_dataset(dest)
    fp, row = next(iter(rows.items()))
    clash = dest / row["class_name"] / f"{fp}.png"
    clash.parent.mkdir(exist_ok=True)
    clash.write_bytes(b"their own bytes")
    theirs = sha256_tree(dest)
    with pytest.raises(ExportError, match=rf"held by files diffspec did not write \({row['class_name']}/{fp}.png\)"):
        project.export("imagefolder", dest, merge=True)
    assert sha256_tree(dest) == theirs  # nothing written, not even the manifest

    clash.write_bytes((project.output / row["path"]).read_bytes())  # the same bytes as ours: left as is
    result = project.export("imagefolder", dest, merge=True)
    assert result.total == 7 and os.stat(clash).st_ino != os.stat(project.output / row["path"]).st_ino
    assert f"{row['class_name']}/{fp}.png" not in json.loads((dest / MANIFEST).read_text())["files"]


def test_without_merge_a_folder_of_other_files_is_refused(
    project: Project, rows: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "dataset"
    their_dataset(dest)
    theirs = sha256_tree(dest)
    with pytest.raises(ExportError, match="already holds files diffspec did not write .* add --merge"):
        project.export("imagefolder", dest)
    with pytest.raises(ExportError, match="already holds files diffspec did not write .* choose an empty folder"):
        project.export("captions-txt", dest)
    with pytest.raises(ExportError, match="--merge adds to an existing dataset folder with --format imagefolder only"):
        project.export("hf", dest, merge=True)
    assert sha256_tree(dest) == theirs


def test_a_killed_export_leaves_its_files_owned_by_the_manifest(
    project: Project, rows: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link, calls = os.link, []

    def dies_on_the_fourth(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as a Ctrl-C between two files
        real_link(src, dst)

    dest = tmp_path / "export"
    monkeypatch.setattr(os, "link", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        project.export("imagefolder", dest)
    monkeypatch.setattr(os, "link", real_link)
    listed = set(json.loads((dest / MANIFEST).read_text())["files"])
    assert {p for p in files_under(dest) if p != MANIFEST} <= listed  # every file it wrote is ours
    result = project.export("imagefolder", dest)  # no folder of foreign files, no collision
    assert result.total == 7 and result.unchanged == 3 and result.linked == 4


# ---- CLI ------------------------------------------------------------------------------------
def test_cli_split_and_merge_options(
    project: Project, rows: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    runner = CliRunner()
    result = runner.invoke(app, ["export", "spec.yaml", "hf", "-f", "hf", "--val", "0.3", "--test", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert sum(data["splits"].values()) == 7 and set(data["splits"]) == {"train", "val", "test"}
    split = Split(val=0.3, test=0.2)
    assert data["splits"] == {n: sum(split.of(fp) == n for fp in rows) for n in ("train", "val", "test")}
    result = runner.invoke(app, ["export", "spec.yaml", "folder", "--val", "0.3"])
    assert result.exit_code == 1 and "has no train/val/test layout" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["export", "spec.yaml", "hf2", "-f", "hf", "--val", "1.5"])
    assert result.exit_code == 1 and "split val must be a fraction in [0, 1), got 1.5" in result.output

    their_dataset(tmp_path / "dataset")
    result = runner.invoke(app, ["export", "spec.yaml", "dataset"])
    assert result.exit_code == 1 and "add --merge" in result.output
    result = runner.invoke(app, ["export", "spec.yaml", "dataset", "--merge"])
    assert result.exit_code == 0, result.output
    assert "exported 7 images (imagefolder)" in " ".join(result.stdout.split())


# ---- rejected images stay out of every format ----------------------------------------------
@pytest.mark.parametrize("fmt", ["imagefolder", "hf", "csv", "yolo", "coco", "captions-txt"])
@pytest.mark.parametrize("how", ["review", "filter"])
def test_a_rejected_image_is_in_no_file_of_any_format_and_exporting_again_writes_nothing(
    project: Project, rows: dict[str, Any], tmp_path: Path, fmt: str, how: str
) -> None:
    import pyarrow.parquet as pq

    fps = list(rows)
    square = rle_to_string(rle_encode(_square_mask(0)))
    segment = pa.table(
        {
            "fingerprint": fps,
            "polygon": [[0.2, 0.2, 0.6, 0.2, 0.6, 0.6]] * len(fps),
            "rle": [square] * len(fps),
            "score": [0.9] * len(fps),
        }
    )
    Catalog(project.output).append_stage("segment", segment, "seg")
    bad = fps[3]
    if how == "review":
        review(project, bad, "reject")
    else:
        reject(project, bad)
    dest = tmp_path / "exported"
    split = 0.3 if fmt in ("hf", "yolo", "coco") else None
    result = project.export(fmt, dest, split=split)
    assert result.total == 6 and result.skipped_rejected == 1
    if fmt != "csv":  # a second identical export writes nothing, whatever the format
        before = stat_tree(dest)
        again = project.export(fmt, dest, split=split)
        assert stat_tree(dest) == before and again.linked == again.copied == again.removed == 0
    files = [dest] if dest.is_file() else [p for p in dest.rglob("*") if p.is_file()]
    assert files and not any(bad in p.name for p in files)
    for path in files:
        if path.suffix == ".parquet":
            assert bad not in pq.read_table(path).column("fingerprint").to_pylist()
        elif path.suffix != ".png":  # labels, metadata, the CSV (no suffix here), the manifest
            assert bad not in path.read_text(encoding="utf-8")
