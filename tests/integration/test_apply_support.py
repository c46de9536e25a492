"""Shared helpers for the apply tests (no tests here): a tiny SD pipeline built once per test
session with ``build_tiny`` and saved to a folder, specs written into tmp folders, and checks
that the catalog's rows match the files on disk."""

from __future__ import annotations

import hashlib
import os
import tempfile
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

_TINY: dict[str, Path] = {}


@pytest.fixture
def one_torch_thread():
    """Run a test's in-process generation on one torch thread (restored after).

    On a 2-core machine shared with other jobs, two OpenMP threads can be 10x slower than one
    (every parallel region waits for a descheduled thread); the tests check behaviour, not speed.
    Tests that compare thread counts do not use this."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_sd() -> Path:
    """A tiny random-weight Stable Diffusion txt2img pipeline folder, built once per session."""
    if "sd" not in _TINY:
        from diffspec.generate.tiny import build_tiny

        folder = Path(tempfile.mkdtemp(prefix="diffspec-tiny-sd-"))
        _TINY["sd"] = build_tiny("sd", "txt2img", folder / "tiny")
    return _TINY["sd"]


def write_spec(
    folder: Path,
    classes: str,
    *,
    size: int = 32,
    steps: int = 2,
    max_batch: int = 4,
    scheduler: str = "ddim",
    extra_budget: str = "",
    output: str = "out",
    name: str = "spec.yaml",
) -> Path:
    """A spec using the tiny model; ``classes`` is the YAML body of `classes:` (indented 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(f"""\
        version: 1
        dataset: tinyset
        output: {output}
        models:
          tiny: {{source: "{tiny_sd()}", scheduler: {scheduler}}}
        defaults: {{model: tiny, size: [{size}, {size}], steps: {steps}, guidance: 7.5, seed: 7, negative: "blurry"}}
        budget: {{devices: cpu, max_batch: {max_batch}{", " + extra_budget if extra_budget else ""}}}
        classes:
        """) + textwrap.indent(textwrap.dedent(classes).strip() + "\n", "  ")
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_catalog(output: Path, expected: int | None = None, raw_unique: bool = True) -> dict[str, str]:
    """Every live row's file exists and matches its sha256; no duplicate fingerprints; no temp
    files. Returns fingerprint -> sha256."""
    from diffspec.catalog.store import Catalog

    cat = Catalog(output)
    raw = cat.read_table("images", ["fingerprint"]).column("fingerprint").to_pylist()
    live = cat.live_images(["fingerprint", "path", "sha256", "bytes"]).to_pylist()
    assert not raw_unique or len(raw) == len(set(raw)), "duplicate fingerprints in the images table"
    assert len(live) == len({r["fingerprint"] for r in live})
    out = {}
    for row in live:
        file = output / row["path"]
        assert file.is_file(), f"row without file: {row['path']}"
        data = file.read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"], f"sha256 mismatch: {row['path']}"
        assert len(data) == row["bytes"]
        out[row["fingerprint"]] = row["sha256"]
    assert not [p for p in output.rglob("*") if ".tmp-" in p.name], "temp files left behind"
    if expected is not None:
        assert len(out) == expected
    return out
