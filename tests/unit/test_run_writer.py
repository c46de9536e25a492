"""The image writer: deterministic PNG with provenance, paths kept inside the output, full rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from diffspec.catalog.records import images_table  # noqa: E402
from diffspec.catalog.schema import IMAGES  # noqa: E402
from diffspec.errors import DiffspecError  # noqa: E402
from diffspec.plan.unit import ModelRef, PipelineKey, WorkUnit, fingerprint_of  # noqa: E402
from diffspec.run.writer import WRITE_COUNTER_ENV, ImageWriter, check_inside, encode_png, png_metadata  # noqa: E402

KEY = PipelineKey(ModelRef("tiny", "/models/tiny", "sd", revision="abc"), "txt2img", "ddim", (), 16, 16, 2, 7.5)


def make_unit(prompt: str = "a cat", cls: str = "cats", index: int = 0) -> WorkUnit:
    return WorkUnit(fingerprint_of(KEY, prompt, "blurry", 42 + index), KEY, cls, index, 42 + index, prompt, "blurry")


def image(value: int = 100) -> Image.Image:
    return Image.new("RGB", (16, 16), (value, 50, 200))


def test_png_bytes_depend_only_on_pixels_and_provenance() -> None:
    u = make_unit()
    meta = png_metadata(u, {"_class_name": "DDIMScheduler", "eta": 0.0})
    a, b = encode_png(image(), meta), encode_png(image(), meta)
    assert a == b
    assert encode_png(image(101), meta) != a
    with Image.open(__import__("io").BytesIO(a)) as im:
        text = im.text
    assert text["prompt"] == "a cat" and text["negative_prompt"] == "blurry" and text["seed"] == "42"
    assert text["model_source"] == "/models/tiny" and text["model_revision"] == "abc"
    assert json.loads(text["scheduler_config"]) == {"_class_name": "DDIMScheduler", "eta": 0.0}
    assert (text["steps"], text["guidance"], text["width"], text["height"]) == ("2", "7.5", "16", "16")
    assert text["fingerprint"] == u.fingerprint and text["diffspec_version"]


def test_non_latin1_prompts_go_into_itxt_chunks() -> None:
    u = make_unit("一只猫, café ☕")
    data = encode_png(image(), png_metadata(u, {}))
    assert b"iTXt" in data
    with Image.open(__import__("io").BytesIO(data)) as im:
        assert im.text["prompt"] == "一只猫, café ☕"


@pytest.mark.parametrize("mode,size", [("RGB", (37, 23)), ("L", (5, 64)), ("RGBA", (1, 1)), ("RGB", (256, 3))])
def test_the_png_encoder_round_trips_pixels_through_pillow_and_zlib_checks(mode: str, size: tuple[int, int]) -> None:
    """Our own encoder against a real reader: Pillow decodes the pixels exactly, verifies every
    chunk's CRC, and reads the text chunks back."""
    import io

    import numpy as np

    from diffspec.run.png import encode_pixels

    rng = np.random.default_rng(sum(size))
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    data = encode_pixels(pixels, {"prompt": "ünïcode ok in latin-1", "seed": "7", "note": "猫"})
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode and im.size == size
        assert np.array_equal(np.asarray(im), pixels)
        assert im.text == {"prompt": "ünïcode ok in latin-1", "seed": "7", "note": "猫"}
    assert encode_pixels(pixels, {"seed": "7"}) == encode_pixels(pixels.copy(), {"seed": "7"})


def test_paths_outside_the_output_root_are_refused(tmp_path: Path) -> None:
    assert check_inside(tmp_path, "images/a/x.png").is_relative_to(tmp_path.resolve())
    for bad in ("../x.png", "images/../../x.png", "/etc/passwd", "."):
        with pytest.raises(DiffspecError, match="outside the output root"):
            check_inside(tmp_path, bad)


def test_files_are_durable_and_rows_have_every_catalog_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "count.txt"
    monkeypatch.setenv(WRITE_COUNTER_ENV, str(counter))
    writer = ImageWriter(tmp_path / "out", "run1", "ds", {"cats": "Cat"}, "cpu")
    units = [make_unit(index=i) for i in range(3)]
    sched = {KEY: {"_class_name": "DDIMScheduler"}}
    written = writer.write_files([(u, image(i)) for i, u in enumerate(units)], sched)
    assert counter.read_text().split() == [u.fingerprint for u in units]
    records = writer.records(
        written, {u.fingerprint: 0.5 for u in units}, {u.fingerprint: 3 for u in units}, sched, "float32"
    )
    rows = [dataclasses.asdict(r) for r in records]
    assert [set(r) for r in rows] == [set(IMAGES.names)] * 3
    for r, u in zip(rows, units):
        data = (tmp_path / "out" / r["path"]).read_bytes()
        assert r["sha256"] == hashlib.sha256(data).hexdigest() and r["bytes"] == len(data)
        assert r["path"] == u.relpath and r["label"] == "Cat" and r["batch_size"] == 3 and r["dtype"] == "float32"
        assert r["canonical"] == u.canonical() and json.loads(r["scheduler_config"]) == {"_class_name": "DDIMScheduler"}
        assert r["created_at"].tzinfo is not None
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]

    assert images_table(records).num_rows == 3  # the catalog accepts them


def test_a_class_folder_that_links_outside_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "out" / "images" / "cats").symlink_to(outside, target_is_directory=True)
    writer = ImageWriter(tmp_path / "out", "run1", "ds", {}, "cpu")
    with pytest.raises(DiffspecError, match="outside the output root"):
        writer.write_files([(make_unit(), image())], {})
    assert list(outside.iterdir()) == []
