"""Shared helpers of the review tests (no tests here): a small catalog made by a real apply of
the embedded digits model with the classifier filter and the segment stage (tiny random-weight
Grounding DINO and SAM, so there are masks to draw), copied per test, and plain HTTP calls."""

from __future__ import annotations

import json
import shutil
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from diffspec.project import Project

CLASSES = {"zero": 3, "one": 3}
_DONE: dict[str, Path] = {}


def write_review_spec(folder: Path, dino: Path, sam: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "review.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: review-digits
        output: out
        models:
          digits: {{source: "builtin:digits", scheduler: ddim}}
        defaults: {{model: digits, size: [32, 32], steps: 4, guidance: 3.0, seed: 11}}
        budget: {{devices: cpu, max_batch: 6, workers: 1}}
        classes:
          zero: {{target: {CLASSES["zero"]}, prompt: "a thin handwritten zero"}}
          one: {{target: {CLASSES["one"]}, prompt: "a thick handwritten one"}}
        stages:
          segment:
            detector: {dino}
            segmenter: {sam}
            text: "{{class}}"
            box_threshold: 0.3
            min_area: 0.0
            max_area: 0.95
          filters:
            - classifier: {{min_confidence: 0.5}}
        """)
    )
    return spec


def applied_copy(tmp_path: Path, dino: Path, sam: Path) -> Path:
    """A finished apply of the review spec, made once per session and copied into ``tmp_path``."""
    if "done" not in _DONE:
        base = tmp_path.parent / "review-applied"
        spec = write_review_spec(base, dino, sam)
        result = Project(spec).apply(progress=False)
        assert result.phase == "finished" and result.made == sum(CLASSES.values()), result.log
        _DONE["done"] = base
    folder = tmp_path / "project"
    shutil.copytree(_DONE["done"], folder, symlinks=True)
    return folder / "review.yaml"


def call(
    url: str, *, token: str | None = None, cookie: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Diffspec-Token"] = token
    if cookie is not None:
        headers["Cookie"] = f"diffspec_review={cookie}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
