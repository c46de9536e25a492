"""The captions stage planned and applied (the food seed): caption units per class, image units
from their text (pending until the captions exist, then made by the same apply), the captions
CSV; a second apply makes nothing; a temperature change re-plans the captions and the images
made from them, and nothing else. Tiny random-weight causal LM (Gemma 3 architecture, byte-level
tokenizer, chat template) and the embedded digits model."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest

try:
    from tiny_stage_models import *  # noqa: F403
except ImportError:  # pragma: no cover
    from tests.integration.tiny_stage_models import *  # noqa: F403

from diffspec.errors import SpecError
from diffspec.project import Project

pytest.importorskip("torch")


def _spec(folder: Path, lm: Path, *, temperature: float = 0.8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "food.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: tiny-food
        output: out
        models:
          digits: {{source: "builtin:digits", scheduler: ddim}}
        defaults: {{model: digits, size: [32, 32], steps: 2, guidance: 3.0, seed: 3}}
        budget: {{devices: cpu, max_batch: 4}}
        classes:
          horchata: {{target: 6, prompt: "a professional food photograph of {{caption}}", label: "Almond Horchata"}}
          steak: {{target: 3, prompt: "a photo of {{caption}}, on a plate"}}
          plain: {{target: 2, prompt: "a plain photo"}}
        stages:
          captions: {{model: {lm}, text: "{{label}}", variations: 3, max_new_tokens: 12, temperature: {temperature}}}
        """)
    )
    return spec


def test_captions_then_their_images_in_one_apply_then_nothing(tmp_path: Path, tiny_lm: Path) -> None:  # noqa: F811
    spec = _spec(tmp_path, tiny_lm)
    project = Project(spec)
    plan = project.plan()
    (captions,) = plan.stages
    assert captions.total_create == 6 and set(captions.pending_classes) == {"horchata", "steak"}
    by_class = {c.name: c for c in plan.classes}
    assert (by_class["horchata"].create, by_class["horchata"].pending) == (0, 6)
    assert (by_class["plain"].create, by_class["plain"].pending) == (2, 0)
    assert plan.pending_images == 9 and plan.has_changes

    result = project.apply(progress=False)
    assert result.phase == "finished", result.log
    assert result.made == 11 and result.stages["run"]["captions"]["made"] == 6
    assert any("re-planned after the captions" in line for line in result.log)

    rows = project.query("SELECT class_name, variation, text, seed FROM captions ORDER BY 1, 2").to_pylist()
    assert [(r["class_name"], r["variation"]) for r in rows] == [("horchata", v) for v in range(3)] + [
        ("steak", v) for v in range(3)
    ]
    images = project.query("SELECT class_name, prompt FROM images").to_pylist()
    texts = {c: {r["text"] for r in rows if r["class_name"] == c} for c in ("horchata", "steak")}
    from diffspec.generate.prompts import unescape

    for image in images:
        if image["class_name"] in texts:  # each captioned image's prompt holds one of its captions
            assert any(t in unescape(image["prompt"]) for t in texts[image["class_name"]]), image

    again = project.plan()
    assert not again.has_changes and again.stages[0].total_keep == 6
    assert project.apply(progress=False).made == 0

    dest = tmp_path / "export"
    exported = project.export("captions", dest)
    assert exported.total == 9  # the two plain images have no caption
    with (dest / "synthetic_captions.csv").open(newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 9 and all((dest / r["image_file"]).is_file() for r in table)
    assert {r["caption"] for r in table} <= {r["text"] for r in rows}
    assert {r["source_text"] for r in table} == {"Almond Horchata", "steak"}

    lora = project.export("captions-txt", tmp_path / "lora")  # every image, its caption beside it
    assert lora.total == 11
    for row in table:  # an image made from a caption: the caption is in its .txt, as written
        fingerprint = Path(row["image_file"]).stem
        (txt,) = (tmp_path / "lora").glob(f"1_*/{fingerprint}.txt")
        assert " ".join(row["caption"].split()) in txt.read_text(encoding="utf-8")


def test_a_temperature_change_replans_the_captions_and_their_images_only(tmp_path: Path, tiny_lm: Path) -> None:  # noqa: F811
    spec = _spec(tmp_path, tiny_lm)
    Project(spec).apply(progress=False)
    changed = _spec(tmp_path, tiny_lm, temperature=1.3)
    plan = Project(changed).plan()
    (captions,) = plan.stages
    assert captions.total_create == 6 and captions.superseded == 6
    by_class = {c.name: c for c in plan.classes}
    assert by_class["plain"].create == 0 and by_class["plain"].keep == 2  # untouched
    assert by_class["horchata"].pending == 6 and by_class["steak"].pending == 3
    result = Project(changed).apply(progress=False)
    assert result.made == 9 and result.stages["run"]["captions"]["made"] == 6
    after = Project(changed).plan()
    assert after.total_create == 0 and after.pending_images == 0 and after.stages[0].total_create == 0
    # The images of the old captions are no longer asked for: removed by `gc` or `apply --prune`.
    assert after.total_remove == 9 and {r.class_name for r in after.removals} == {"horchata", "steak"}


def test_caption_errors_name_the_place(tmp_path: Path, tiny_lm: Path) -> None:  # noqa: F811
    spec = _spec(tmp_path, tiny_lm)
    text = spec.read_text()
    spec.write_text(text.replace("max_new_tokens: 12", 'max_new_tokens: 12, instruction: "Describe {dish}"'))
    with pytest.raises(SpecError, match=r"food.yaml:\d+:\d+.*\{dish\}"):
        Project(spec).validate()
    spec.write_text(text[: text.index("stages:")])  # {caption} without the stage
    with pytest.raises(SpecError, match=r"uses \{caption\}, which needs the captions stage"):
        Project(spec).validate()
