"""The segment stage planned and applied like images, on the embedded digits model with tiny
random-weight Grounding DINO and SAM (built from configs, loaded through from_pretrained):
plan shows the stage's units per class, apply records boxes and masks batch by batch in the
``segment`` table, a second apply makes nothing, a mask-rule change re-plans the masks only, and
the YOLO export (split or not) and the COCO export are read back by real consumers
(supervision, pycocotools)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

try:
    from tiny_stage_models import *  # noqa: F403
except ImportError:  # pragma: no cover - run from the repository root
    from tests.integration.tiny_stage_models import *  # noqa: F403

from diffspec.errors import PlanError, SpecError
from diffspec.project import Project
from diffspec.run.apply import apply_plan
from diffspec.stages.masks import Rle, polygons_to_mask, rle_decode, rle_from_string

pytest.importorskip("torch")

CLASSES = {"zero": 4, "one": 3}


def _spec(folder: Path, dino: Path, sam: Path, *, min_area: float = 0.0, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "fruit.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: tiny-fruit
        output: out
        models:
          digits: {{source: "builtin:digits", scheduler: ddim}}
        defaults: {{model: digits, size: [32, 32], steps: 2, guidance: 3.0, seed: 3}}
        budget: {{devices: cpu, max_batch: 4}}
        classes:
          zero: {{target: {CLASSES["zero"]}, prompt: "a thin handwritten zero", label: "digit zero"}}
          one: {{target: {CLASSES["one"]}, prompt: "a thick handwritten one"}}
        stages:
          segment:
            detector: {dino}
            segmenter: {sam}
            text: "{{label}}"
            box_threshold: 0.3
            min_area: {min_area}
            max_area: 0.9
            dedup_iou: 0.7
            batch_size: 3
        {extra}""")
    )
    return spec


@pytest.fixture
def applied(tmp_path: Path, tiny_dino: Path, tiny_sam: Path) -> Path:  # noqa: F811
    spec = _spec(tmp_path / "run", tiny_dino, tiny_sam)
    result = Project(spec).apply(progress=False)
    assert result.phase == "finished", result.log
    return spec


def test_plan_shows_the_stage_units_per_class_and_needs_no_model(tmp_path: Path, tiny_dino, tiny_sam) -> None:  # noqa: F811
    plan = Project(_spec(tmp_path, tiny_dino, tiny_sam)).plan()
    (segment,) = plan.stages
    assert [(c.class_name, c.create, c.keep, c.after_images) for c in segment.classes] == [
        ("zero", 4, 0, 4),
        ("one", 3, 0, 3),
    ]
    assert segment.detector.content is not None  # a local folder: identified by its files
    assert len({u.fingerprint for u in segment.create}) == 7
    assert {u.text for u in segment.create} == {"digit zero", "one"}  # {label} per class
    from diffspec.plan.render import plan_to_dict, render_markdown

    data = plan_to_dict(plan)
    assert data["stages"][0]["create"] == 7 and data["stages"][0]["classes"][0]["class"] == "zero"
    assert "| segment | zero | +4 |" in render_markdown(plan)
    assert "7 stage units to run" in render_markdown(plan)


def test_apply_records_masks_then_a_second_apply_makes_nothing(applied: Path) -> None:
    project = Project(applied)
    rows = project.query(
        "SELECT count(DISTINCT segment_fingerprint) AS units, count(DISTINCT fingerprint) AS images, "
        "count(*) FILTER (WHERE kept) AS kept, count(*) FILTER (WHERE instance IS NOT NULL) AS detections "
        "FROM segment"
    ).to_pylist()[0]
    assert rows["units"] == rows["images"] == sum(CLASSES.values())
    assert rows["detections"] >= rows["kept"] > 0  # the random tiny detector finds boxes at 0.3
    # Every image of the catalog is covered, and every kept mask decodes to its recorded area.
    images = set(project.query("SELECT fingerprint FROM images").column("fingerprint").to_pylist())
    masks = project.query("SELECT fingerprint, rle, area, width, height, polygon FROM segment WHERE kept").to_pylist()
    assert {m["fingerprint"] for m in masks} <= images
    for m in masks:
        mask = rle_decode(rle_from_string(m["rle"], (m["height"], m["width"])))
        assert int(mask.sum()) == m["area"]
        assert isinstance(rle_from_string(m["rle"], (m["height"], m["width"])), Rle)
        back = polygons_to_mask([np.array(m["polygon"]).reshape(-1, 2)], m["height"], m["width"])
        assert (back & mask).sum() > 0  # the outline is the mask's (exact IoU is tested in test_stages_masks)

    views = project.query(
        "SELECT (SELECT count(*) FROM detections) AS d, (SELECT count(*) FROM masks) AS m"
    ).to_pylist()[0]
    assert views == {"d": rows["detections"], "m": rows["kept"]}

    again = project.plan()
    assert not again.has_changes and again.stages[0].total_create == 0 and again.stages[0].total_keep == 7
    second = project.apply(progress=False)
    assert second.made == 0 and second.stages.get("run") is None  # the stage ran nothing
    parts = sorted((project.output / "catalog" / "stages" / "segment").glob("*.parquet"))
    assert len(parts) == 1  # the run's batches were merged into one part


def test_a_mask_rule_change_replans_the_masks_and_nothing_else(applied: Path, tiny_dino, tiny_sam) -> None:  # noqa: F811
    spec = _spec(applied.parent, tiny_dino, tiny_sam, min_area=0.05)
    plan = Project(spec).plan()
    assert plan.total_create == 0 and plan.total_keep == 7  # the images stay
    (segment,) = plan.stages
    assert segment.total_create == 7 and segment.superseded == 7
    old = Project(applied).query("SELECT DISTINCT detection_fingerprint FROM segment").column(0).to_pylist()
    assert {u.detection_fingerprint for u in segment.create} == set(old)  # same boxes, new mask rules
    result = Project(spec).apply(progress=False)
    assert result.made == 0 and result.stages["run"]["segment"]["made"] == 7
    small = (
        Project(spec)
        .query(
            "SELECT count(*) AS n FROM segment WHERE kept AND area < 0.05 * width * height AND run_id = "
            f"'{result.run_id}'"
        )
        .to_pylist()[0]["n"]
    )
    assert small == 0


def test_yolo_export_is_read_by_supervision(applied: Path) -> None:
    sv = pytest.importorskip("supervision")  # part of the dev extra: a real consumer of our labels
    project = Project(applied)
    dest = applied.parent / "yolo"
    result = project.export("yolo", dest)
    assert result.total == sum(CLASSES.values())
    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(dest / "images" / "train"),
        annotations_directory_path=str(dest / "labels" / "train"),
        data_yaml_path=str(dest / "data.yaml"),
        force_masks=True,
    )
    assert dataset.classes == ["zero", "one"]
    assert len(dataset) == sum(CLASSES.values())
    labels = list((dest / "labels" / "train").glob("*.txt"))
    assert len(labels) == sum(CLASSES.values())  # one label file per image
    kept = project.query("SELECT fingerprint, class_name FROM segment WHERE kept").to_pylist()
    total_masks = 0
    for path, _image, detections in dataset:
        fp = Path(path).stem
        mine = [k for k in kept if k["fingerprint"] == fp]
        assert len(detections) == len(mine)
        assert detections.mask is not None and detections.mask.shape[0] == len(mine)
        assert set(detections.class_id.tolist()) <= {0 if mine and mine[0]["class_name"] == "zero" else 1}
        total_masks += len(detections)
    assert total_masks == len(kept)
    for label in labels:
        for line in label.read_text().splitlines():
            values = [float(v) for v in line.split()[1:]]
            assert int(line.split()[0]) in (0, 1) and all(0.0 <= v <= 1.0 for v in values)


def test_stage_errors_name_the_place(tmp_path: Path, tiny_dino, tiny_sam) -> None:  # noqa: F811
    spec = _spec(tmp_path, tiny_dino, tiny_sam)
    spec.write_text(
        spec.read_text()
        .replace('text: "{label}"', 'text: "{count} {label}"')
        .replace("batch_size: 3", f"batch_size: 3\n    segmenter_revision: main\n    detector_revision: {'v1'}")
    )
    with pytest.raises(SpecError) as info:
        Project(spec).validate()
    message = str(info.value)
    assert "fruit.yaml:" in message and "{count}" in message and "{class} and {label} only" in message
    assert "`segmenter_revision` applies to hub ids only" in message
    assert "`detector_revision` applies to hub ids only" in message


def test_apply_plan_without_stage_runners_refuses_before_any_work(tmp_path: Path, tiny_dino, tiny_sam) -> None:  # noqa: F811
    plan = Project(_spec(tmp_path, tiny_dino, tiny_sam)).plan()
    with pytest.raises(PlanError, match="no runner"):
        apply_plan(plan, progress=False)
    assert not (tmp_path / "out" / "images").exists()


def test_plan_json_of_a_spec_without_stages_has_no_stages_key(tmp_path: Path, tiny_dino, tiny_sam) -> None:  # noqa: F811
    spec = _spec(tmp_path, tiny_dino, tiny_sam)
    text = spec.read_text()
    spec.write_text(text[: text.index("stages:")])
    from diffspec.plan.render import render_json

    assert "stages" not in json.loads(render_json(Project(spec).plan()))


def test_the_shipped_fruit_spec_end_to_end_on_tiny_models(tmp_path: Path, tiny_dino, tiny_sam) -> None:  # noqa: F811
    """specs/fruit.yaml as shipped, its models swapped for tiny ones (FLUX for the embedded digits
    model, the hub detector and segmenter for tiny folders), through its `preview` profile."""
    sv = pytest.importorskip("supervision")
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "specs" / "fruit.yaml").read_text()
    swaps = {
        "source: black-forest-labs/FLUX.1-dev": 'source: "builtin:digits"',
        "    dtype: bfloat16\n": "",
        "scheduler: flow_euler": "scheduler: ddim",
        "size: [1024, 1024]": "size: [32, 32]",
        "steps: 28": "steps: 2",
        "defaults: {size: [512, 512], steps: 12}": "defaults: {size: [32, 32], steps: 2}",
        "budget: {vram_gb: 80, devices: auto, max_batch: 4}": "budget: {devices: cpu, max_batch: 8}",
        "detector: IDEA-Research/grounding-dino-base": f"detector: {tiny_dino}",
        "segmenter: facebook/sam-vit-base": f"segmenter: {tiny_sam}",
        "min_area: 0.002": "min_area: 0.0",
    }
    for old, new in swaps.items():
        assert old in text, old  # the shipped spec still says what this test swaps
        text = text.replace(old, new)
    spec = tmp_path / "specs" / "fruit.yaml"
    spec.parent.mkdir()
    spec.write_text(text)
    project = Project(spec, profile="preview")
    plan = project.plan()
    assert plan.total_create == 120 and plan.stages[0].total_create == 120
    result = project.apply(progress=False)
    assert result.phase == "finished" and result.stages["run"]["segment"]["made"] == 120
    assert not project.plan().has_changes
    dest = tmp_path / "yolo"
    project.export("yolo", dest)
    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(dest / "images" / "train"),
        annotations_directory_path=str(dest / "labels" / "train"),
        data_yaml_path=str(dest / "data.yaml"),
        force_masks=True,
    )
    assert len(dataset) == 120 and len(dataset.classes) == 12
    found = sum(len(d) for _, _, d in dataset)
    kept = project.query("SELECT count(*) AS n FROM masks").column("n")[0].as_py()
    assert found == kept > 0
    for _, _, detections in dataset:
        assert ((detections.class_id >= 0) & (detections.class_id < 12)).all()


def test_a_saved_plan_runs_its_stage_units(tmp_path: Path, tiny_dino, tiny_sam) -> None:  # noqa: F811
    from diffspec.plan.planfile import load_plan, save_plan

    spec = _spec(tmp_path, tiny_dino, tiny_sam)
    project = Project(spec)
    save_plan(project.plan(), tmp_path / "plan.json")
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert len(saved["stage_create"]["segment"]) == 7
    result = project.apply(load_plan(tmp_path / "plan.json"), progress=False)
    assert result.stages["run"]["segment"]["made"] == 7
    assert load_plan(tmp_path / "plan.json").stages[0].total_create == 0  # resumable: nothing left


def test_coco_export_is_read_by_pycocotools_with_one_annotation_per_kept_mask(applied: Path) -> None:
    coco_api = pytest.importorskip("pycocotools.coco")
    mask_api = pytest.importorskip("pycocotools.mask")
    from PIL import Image

    from diffspec.catalog.store import Catalog, utcnow
    from diffspec.catalog.verdicts import REVIEW_SCHEMA, REVIEW_TABLE
    from diffspec.export import Split

    project = Project(applied)
    kept = project.query("SELECT fingerprint, class_name, rle, width, height FROM segment WHERE kept").to_pylist()
    # A person rejects one image that has masks: it and its masks stay out of the export.
    rejected = kept[0]["fingerprint"]
    decision = {
        "fingerprint": rejected,
        "class_name": None,
        "decision": "reject",
        "session_id": "s",
        "created_at": utcnow(),
    }
    Catalog(project.output).append_stage(REVIEW_TABLE, pa.Table.from_pylist([decision], schema=REVIEW_SCHEMA), "s")
    expected = [k for k in kept if k["fingerprint"] != rejected]

    split = Split(val=0.3)
    dest = applied.parent / "coco"
    result = project.export("coco", dest, split=split)
    assert result.total == sum(CLASSES.values()) - 1 and result.skipped_rejected == 1
    assert set(result.splits) == {"train", "val"} and all(result.splits.values())
    annotations = 0
    for name in ("train", "val"):
        coco = coco_api.COCO(str(dest / "annotations" / f"instances_{name}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        images = coco.loadImgs(coco.getImgIds())
        assert len(images) == result.splits[name]  # images without masks are listed too
        assert {split.of(img["fingerprint"]) for img in images} == {name}
        for ann in coco.loadAnns(coco.getAnnIds()):
            image = coco.loadImgs(ann["image_id"])[0]
            with Image.open(dest / name / image["file_name"]) as im:
                assert coco.annToMask(ann).shape == (im.height, im.width)
            mine = [k for k in expected if k["fingerprint"] == image["fingerprint"]]
            decoded = mask_api.decode(coco.annToRLE(ann))
            assert any(
                (rle_decode(rle_from_string(k["rle"], (k["height"], k["width"]))) == decoded.astype(bool)).all()
                for k in mine
            )
            assert ann["bbox"] == mask_api.toBbox(coco.annToRLE(ann)).tolist() and ann["area"] == decoded.sum()
            assert coco.loadCats(ann["category_id"])[0]["name"] == mine[0]["class_name"]
        annotations += len(coco.getAnnIds())
    assert expected and annotations == len(expected)  # one annotation per kept mask the catalog holds


def test_yolo_split_is_read_by_supervision_split_by_split(applied: Path) -> None:
    sv = pytest.importorskip("supervision")
    import ruamel.yaml

    from diffspec.export import Split

    project = Project(applied)
    split = Split(val=0.3, test=0.2)
    dest = applied.parent / "yolo-split"
    result = project.export("yolo", dest, split=split)
    data = ruamel.yaml.YAML(typ="safe").load((dest / "data.yaml").read_text())
    kept = project.query("SELECT fingerprint FROM segment WHERE kept").column(0).to_pylist()
    assert kept and result.splits["train"] and result.splits["val"]
    seen: dict[str, str] = {}
    masks = 0
    for name in ("train", "val", "test"):
        if not result.splits[name]:
            assert name not in data or name == "val"
            continue
        assert data[name] == f"images/{name}"
        dataset = sv.DetectionDataset.from_yolo(
            images_directory_path=str(dest / data[name]),
            annotations_directory_path=str(dest / "labels" / name),
            data_yaml_path=str(dest / "data.yaml"),
            force_masks=True,
        )
        assert len(dataset) == result.splits[name] and dataset.classes == list(CLASSES)
        for path, _image, detections in dataset:
            seen[Path(path).stem] = name
            masks += len(detections)
    assert len(seen) == sum(CLASSES.values()) and all(split.of(fp) == name for fp, name in seen.items())
    assert masks == len(kept)

    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    again = project.export("yolo", dest, split=split)
    assert again.linked == again.copied == again.removed == 0
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == before
