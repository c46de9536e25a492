"""The filters stage planned and applied like images: a tiny random-weight CLIP (built from configs,
loaded through from_pretrained), real imagehash, the embedded digits model, and a tiny Stable
Diffusion whose VAE decoder was zeroed, so every image it makes is one flat gray (as a broken
checkpoint or a tripped safety checker makes them).

Planted: class ``three`` lists one seed twice under two prompts the digits model reads alike
("a ..." / "the ..."), so its units 0 and 1 are the same picture; class ``four`` sweeps over the
flat model and the digits model, and its unit 0 falls on the flat one. Then: both are rejected
(and kept), every score is in the catalog, replace_rejected brings each class back to its target
with accepted images in one more apply, a second apply makes nothing, and a new threshold
re-plans that filter's units only."""

from __future__ import annotations

import json
import shutil
import textwrap
import threading
from pathlib import Path

import pytest

try:
    from tiny_stage_models import *  # noqa: F403
except ImportError:  # pragma: no cover - run from the repository root
    from tests.integration.tiny_stage_models import *  # noqa: F403

from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import rejected_fingerprints, verdicts
from diffspec.plan.render import render_json, render_markdown
from diffspec.project import Project
from diffspec.run.stage_phase import StageContext
from diffspec.stages.filters import run_filters

pytest.importorskip("torch")
pytest.importorskip("imagehash")

TARGETS = {"three": 3, "four": 1}


@pytest.fixture(scope="session")
def flat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD pipeline whose VAE decoder's last convolution is zero: it decodes every latent
    to 0, which the pipeline maps to one flat gray."""
    from safetensors.torch import load_file, save_file

    from diffspec.generate.tiny import build_tiny

    folder = build_tiny("sd", "txt2img", tmp_path_factory.mktemp("flat") / "flat-sd")
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 0 if k.startswith("decoder.conv_out") else v for k, v in tensors.items()}, weights)
    return folder


def _spec(root: Path, clip: Path, flat: Path, clip_min: float = -1.0, extra: str = "") -> Path:
    spec = root / "spec.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            dataset: filtered
            output: out
            models:
              digits: {{source: builtin:digits, scheduler: ddim}}
              flat: {{source: {flat}, defaults: {{steps: 2, guidance: 1.0}}}}
            defaults: {{model: digits, size: [32, 32], steps: 8, guidance: 3.0, seed: 5}}
            budget: {{devices: cpu, max_batch: 4}}
            classes:
              three: {{seeds: [7, 7, 8], prompt: ["a handwritten 3", "the handwritten 3"], existing: existing}}
              four: {{target: 1, prompt: "a thin four", sweep: {{model: [flat, digits]}}, seed_key: a{extra}}}
            stages:
              replace_rejected: true
              filters:
                - clip_score: {{model: {clip}, min: {clip_min}, batch_size: 2}}
                - near_duplicate: {{max_hamming: 4}}
                - blank: {{max_std: 2.0}}
            """
        )
    )
    (root / "existing").mkdir(exist_ok=True)
    return spec


def _live(project: Project) -> dict[str, dict[str, object]]:
    table = Catalog(project.output).live_images(["fingerprint", "class_name", "unit_index", "model_name", "path"])
    return {r["fingerprint"]: r for r in table.to_pylist()}


def _accepted_per_class(project: Project) -> dict[str, int]:
    rejected = rejected_fingerprints(Catalog(project.output))
    counts = dict.fromkeys(TARGETS, 0)
    for fp, row in _live(project).items():
        counts[str(row["class_name"])] += fp not in rejected
    return counts


def _stage_counts(project: Project) -> dict[tuple[str, str], tuple[int, int]]:
    plan = project.plan()
    (stage,) = [s for s in plan.stages if s.stage == "filters"]
    return {(c.stage, c.class_name): (c.create, c.keep) for c in stage.classes}


def test_planted_duplicate_and_blank_are_rejected_and_replaced(
    tmp_path: Path, tiny_clip: Path, flat_model: Path, one_thread: None
) -> None:
    spec = _spec(tmp_path, tiny_clip, flat_model)
    project = Project(spec)
    first = project.plan()
    assert {c.name: c.create for c in first.classes} == TARGETS
    assert set(_stage_counts(project).values()) == {(3, 0), (1, 0)}  # every filter, every image

    result = project.apply(progress=False)
    assert result.made == 4 and result.stages["run"]["filters"]["made"] == 12
    live = _live(project)
    by_unit = {(r["class_name"], r["unit_index"]): fp for fp, r in live.items()}
    catalog = Catalog(project.output)

    # the duplicate: unit 1 of three is unit 0's picture; the blank: four's flat-model image
    got = verdicts(catalog)
    assert {fp for fp, v in got.items() if v.rejected} == {by_unit[("three", 1)], by_unit[("four", 0)]}
    assert got[by_unit[("three", 1)]].failed_filters == ("near_duplicate",)
    assert got[by_unit[("four", 0)]].failed_filters == ("blank",)
    assert live[by_unit[("four", 0)]]["model_name"] == "flat"
    dup = {r["fingerprint"]: r for r in catalog.read_table("near_duplicate").to_pylist()}
    assert dup[by_unit[("three", 1)]]["nearest_hamming"] == 0
    assert dup[by_unit[("three", 1)]]["nearest_to"] == by_unit[("three", 0)]
    assert dup[by_unit[("three", 0)]]["nearest_to"] is None  # nothing before it, an empty existing folder
    blank = {r["fingerprint"]: r for r in catalog.read_table("blank").to_pylist()}
    assert blank[by_unit[("four", 0)]]["gray_std"] == 0.0 and blank[by_unit[("four", 0)]]["dominant_share"] == 1.0
    # every score is recorded: CLIP's raw cosine per image, against its prompt
    clip = catalog.read_table("clip_score").to_pylist()
    assert sorted(r["fingerprint"] for r in clip) == sorted(live)
    assert all(-1.0 <= r["clip_score"] <= 1.0 and r["model"] == str(tiny_clip) for r in clip)
    # rejected images stay: rows and files
    assert all((project.output / str(r["path"])).is_file() for r in live.values())

    # the plan replaces them, and says so in every format
    plan = project.plan()
    rows = {c.name: c for c in plan.classes}
    assert (rows["three"].create, rows["three"].keep, rows["three"].replaced) == (1, 3, 1)
    assert (rows["four"].create, rows["four"].keep, rows["four"].replaced) == (1, 1, 1)
    assert "+1 (+1 to replace 1 rejected)" in render_markdown(plan)
    assert "Plan: 2 to create (2 replacing rejected images), 4 to keep" in render_markdown(plan)
    as_json = {c["class"]: c for c in json.loads(render_json(plan))["classes"]}
    assert as_json["four"]["replace_rejected"] == {"rejected": 1, "added": 1}
    status = {s.name: s for s in project.status().classes}
    assert status["three"].remaining == 1 and status["three"].short == 1 and status["three"].rejected == 1

    # one more apply brings every class to its target with accepted images
    second = project.apply(progress=False)
    assert second.made == 2
    assert _accepted_per_class(project) == TARGETS
    new = {r["class_name"]: r for fp, r in _live(project).items() if fp not in live}
    assert new["three"]["unit_index"] == 3 and new["four"]["unit_index"] == 1
    assert new["four"]["model_name"] == "digits"
    assert len(_live(project)) == 6  # nothing removed

    # and another makes nothing
    assert not project.plan().has_changes
    third = project.apply(progress=False)
    assert third.made == 0 and "filters" not in third.stages.get("run", {})

    # a new CLIP threshold re-plans the CLIP verdicts only
    changed = _spec(tmp_path, tiny_clip, flat_model, clip_min=-0.999)
    counts = _stage_counts(Project(changed))
    assert {k: v for k, v in counts.items() if v[0]} == {
        ("filters.clip_score", "three"): (4, 0),
        ("filters.clip_score", "four"): (2, 0),
    }
    assert Project(changed).plan().total_create == 0

    # a copy of an accepted image of three in its existing folder: three's near-duplicate
    # verdicts are planned again (they depend on the folder's content), nothing else
    spec = _spec(tmp_path, tiny_clip, flat_model)
    fp2 = by_unit[("three", 2)]
    shutil.copy(project.output / str(live[fp2]["path"]), tmp_path / "existing" / "real.png")
    counts = _stage_counts(Project(spec))
    assert {k: v for k, v in counts.items() if v[0]} == {("filters.near_duplicate", "three"): (4, 0)}
    Project(spec).apply(progress=False)
    assert verdicts(catalog)[fp2].failed_filters == ("near_duplicate",)
    # The latest by time, as readers take it: parts sort by run id, whose stamp is to the second,
    # so two runs within one second may list in either order.
    latest = max(
        (r for r in catalog.read_table("near_duplicate").to_pylist() if r["fingerprint"] == fp2),
        key=lambda r: r["created_at"],
    )
    assert (latest["nearest_to"], latest["nearest_hamming"], latest["kept"]) == ("existing:real.png", 0, False)

    # with replace_rejected off for the class, the plan adds nothing and says the class is short
    spec.write_text(spec.read_text().replace("existing: existing}", "existing: existing, replace_rejected: false}"))
    plan = Project(spec).plan()
    three = next(c for c in plan.classes if c.name == "three")
    assert (three.create, three.rejected, three.short, three.remove) == (0, 2, 2, 1)
    assert "(2 short: 2 rejected, replace_rejected is off)" in render_markdown(plan)
    status = next(s for s in Project(spec).status().classes if s.name == "three")
    assert status.remaining == 0 and status.short == 2 and status.replace_rejected is False


class _StopAfter(threading.Event):
    """Ctrl-C after ``n`` batches: the stage checks ``stop`` before each batch."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0


def test_a_stopped_run_keeps_its_finished_batches_and_the_next_makes_the_rest(
    tmp_path: Path, tiny_clip: Path, flat_model: Path, one_thread: None
) -> None:
    spec = _spec(tmp_path, tiny_clip, flat_model)
    project = Project(spec)
    project.apply(progress=False, stages=False)  # images only
    plan = project.plan()
    (stage,) = [s for s in plan.stages if s.stage == "filters"]
    assert stage.total_create == 12
    # a part as diffspec 0.1 wrote the table (dHash, float distances): the new rows must sit beside it
    import pyarrow as pa

    old = {"fingerprint": ["0.1"], "class_name": ["three"], "dhash": [5], "nearest_hamming": [64.0], "kept": [True]}
    Catalog(project.output).append_stage("near_duplicate", pa.table(old), "20250101T000000-old")
    context = StageContext(project.output, Catalog(project.output), "stopped-run", "cpu", _StopAfter(1))
    outcome = run_filters(stage, context)
    assert outcome.interrupted and outcome.made == 2  # the first CLIP batch of two, then stopped
    again = project.plan()
    (rest,) = [s for s in again.stages if s.stage == "filters"]
    assert rest.total_create == 10
    assert {u.fingerprint for u in rest.create} < {u.fingerprint for u in stage.create}
    project.apply(progress=False)
    assert Catalog(project.output).read_table("near_duplicate").num_rows == 1 + 4
    (final,) = [s for s in project.plan().stages if s.stage == "filters"]
    made = set(_live(project))
    assert not [u for u in final.create if u.image_fingerprint in made]  # left: the top-ups' verdicts


def test_clip_score_is_the_cosine_of_clips_own_embeddings_whatever_the_batch(tiny_clip: Path, one_thread: None) -> None:
    """The score against transformers' own get_image_features / get_text_features, and the same
    for an image scored alone or in a batch with a longer prompt (padding): batch_size is not in
    the fingerprint because it changes no score."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from diffspec.plan.stage_identity import HFModelRef
    from diffspec.stages.clip import ClipScorer

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    texts = ["a handwritten 3", "a thin slanted handwritten four on white paper", "7"]
    scorer = ClipScorer.load(HFModelRef(str(tiny_clip)), "cpu")
    together = scorer.score(images, texts)
    alone = [scorer.score([im], [t])[0] for im, t in zip(images, texts)]
    assert together == pytest.approx(alone, abs=1e-5)

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip, backend="pil")
    with torch.no_grad():
        image = model.get_image_features(**processor(images=images, return_tensors="pt"))
        text = model.get_text_features(**processor(text=texts, return_tensors="pt", padding=True))
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    expected = torch.nn.functional.cosine_similarity(image, text).tolist()
    assert together == pytest.approx(expected, abs=1e-5)
    assert all(-1.0 <= s <= 1.0 for s in together)
