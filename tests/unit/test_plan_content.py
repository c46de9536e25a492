"""Identity covers the bytes that make the pixels: local model folders, LoRA and embedding files
and input images are in the fingerprint by content (diffspec/content.py), cached so a second plan
reads nothing again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from diffspec.content import CACHE_NAME, ContentCache, default_cache, reset_default_cache
from diffspec.plan.compile import compile_spec
from diffspec.spec.loader import load_spec

SPEC = """\
version: 1
dataset: content
output: out
models:
  styled:
    source: runwayml/stable-diffusion-v1-5
    revision: abc123
    loras: [{source: adapters/style.safetensors, scale: 0.8}]
    embeddings: [{source: adapters/token.safetensors, token: "<tok>"}]
  plain: {source: runwayml/stable-diffusion-v1-5, revision: abc123}
  local: {source: models/mine, family: sd}
defaults: {model: plain, size: [64, 64], steps: 4, guidance: 5.0, seed: 3}
classes:
  styled: {target: 6, model: styled, prompt: "a <tok> cat"}
  plain: {target: 6, prompt: "a cat"}
  local: {target: 6, model: local, prompt: "a cat"}
  edited: {target: 6, prompt: "a cat", mode: img2img, input: {images: "inputs/*.png"}}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DIFFSPEC_CACHE_DIR", str(tmp_path / "cache"))
    reset_default_cache()
    root = tmp_path / "project"
    (root / "adapters").mkdir(parents=True)
    (root / "adapters" / "style.safetensors").write_bytes(b"lora-v1" * 100)
    (root / "adapters" / "token.safetensors").write_bytes(b"embedding-v1" * 10)
    model = root / "models" / "mine"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (model / "unet" / "config.json").write_text('{"sample_size": 8}')
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights" * 1000)
    (root / "inputs").mkdir()
    for name in ("a", "b"):
        (root / "inputs" / f"{name}.png").write_bytes(f"png-{name}".encode())
    (root / "spec.yaml").write_text(SPEC)
    yield root
    reset_default_cache()


def fingerprints(root: Path) -> dict[str, list[str]]:
    return {name: units.fingerprints for name, units in compile_spec(load_spec(root / "spec.yaml")).items()}


def changed(before: dict[str, list[str]], after: dict[str, list[str]]) -> set[str]:
    return {name for name in before if before[name] != after[name]}


def replace(path: Path, data: bytes) -> None:
    """A new file at the same path with the same size and mtime (as `cp -p` would leave it)."""
    stat = path.stat()
    assert len(data) == stat.st_size
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_replacing_a_lora_file_replans_exactly_its_units(project: Path) -> None:
    before = fingerprints(project)
    replace(project / "adapters" / "style.safetensors", b"lora-v2" * 100)
    after = fingerprints(project)
    assert changed(before, after) == {"styled"}
    assert not set(before["styled"]) & set(after["styled"])


def test_replacing_an_embedding_file_replans_exactly_its_units(project: Path) -> None:
    before = fingerprints(project)
    replace(project / "adapters" / "token.safetensors", b"embedding-v2" * 10)
    assert changed(before, fingerprints(project)) == {"styled"}


def test_a_local_model_folder_is_its_weights_and_configs(project: Path) -> None:
    model = project / "models" / "mine"
    before = fingerprints(project)
    (model / "README.md").write_text("notes")  # not a model file: changes no pixel
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("x")
    assert fingerprints(project) == before
    (model / "unet" / "config.json").write_text('{"sample_size": 16}')
    after_config = fingerprints(project)
    assert changed(before, after_config) == {"local"}
    replace(model / "unet" / "diffusion_pytorch_model.safetensors", b"WEIGHTS" * 1000)
    assert changed(after_config, fingerprints(project)) == {"local"}


def test_replacing_an_input_image_replans_only_its_units(project: Path) -> None:
    units = compile_spec(load_spec(project / "spec.yaml"))["edited"]
    on_a = {fp for fp, i in zip(units.fingerprints, units.input_of.tolist()) if units.inputs[i].path.endswith("a.png")}
    replace(project / "inputs" / "a.png", b"png-A")
    after = set(fingerprints(project)["edited"])
    assert set(units.fingerprints) - after == on_a and len(on_a) == 3


def test_touching_files_changes_no_fingerprint(project: Path) -> None:
    before = fingerprints(project)
    for path in project.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert fingerprints(project) == before


def test_moving_the_project_changes_no_fingerprint(project: Path) -> None:
    before = fingerprints(project)
    moved = project.parent / "elsewhere"
    shutil.move(project, moved)
    assert fingerprints(moved) == before


def test_a_second_plan_reads_no_file_again_and_the_cache_persists(project: Path) -> None:
    fingerprints(project)
    cache = default_cache()
    read = cache.files_hashed
    assert read == 7  # lora, embedding, 3 model files, 2 inputs
    first = fingerprints(project)
    assert cache.files_hashed == read
    # A new process (a fresh cache from the persisted file) reads nothing either.
    reset_default_cache()
    assert fingerprints(project) == first
    assert default_cache().files_hashed == 0
    assert (project.parent / "cache" / CACHE_NAME).is_file()
    assert not (project / "out").exists(), "plan wrote into the output root"


def test_a_corrupt_cache_file_is_ignored(project: Path) -> None:
    first = fingerprints(project)
    reset_default_cache()
    (project.parent / "cache" / CACHE_NAME).write_bytes(b"\x00not json")
    assert fingerprints(project) == first
    assert default_cache().files_hashed == 7


def test_a_file_written_while_hashed_is_not_cached(tmp_path: Path) -> None:
    cache = ContentCache(None)
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = cache.file_sha256(path)
    path.write_bytes(b"two")
    assert cache.file_sha256(path) != first
