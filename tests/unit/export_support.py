"""A real catalog for export tests without a model run: a PNG file and a catalog row per planned
unit, written as apply would, plus filter verdicts and review decisions appended as the stages
and `diffspec review` append them."""

from __future__ import annotations

import csv
import hashlib
import io
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog, utcnow
from diffspec.catalog.verdicts import REVIEW_SCHEMA, REVIEW_TABLE
from diffspec.project import Project

PNG = pytest.importorskip("PIL.Image")

__all__ = [
    "CLASSES",
    "PNG",
    "SPEC",
    "files_under",
    "png_bytes",
    "project",
    "read_csv",
    "record_images",
    "reject",
    "review",
    "rows",
    "sha256_tree",
    "write_spec",
]

CLASSES = {"zero": 3, "one": 2, "seven": 2}
SPEC = """\
version: 1
dataset: export-test
output: out
models:
  digits: {{source: "builtin:digits", scheduler: ddim}}
defaults: {{model: digits, size: [32, 32], steps: 2, guidance: 3.0, seed: 5}}
classes:
  zero: {{target: {zero}, prompt: "a thin upright handwritten zero"}}
  one: {{target: {one}, prompt: "a thick handwritten one"}}
  seven: {{target: {seven}, prompt: "a thin handwritten seven"}}
{extra}"""


def write_spec(folder: Path, extra: str = "", **targets: int) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(extra=textwrap.dedent(extra), **{**CLASSES, **targets}), encoding="utf-8")
    return spec


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    PNG.new("RGB", (8, 8), (i * 30 % 256, 255 - i * 30 % 256, i)).save(buf, format="PNG")
    return buf.getvalue()


def record_images(project: Project) -> dict[str, dict[str, Any]]:
    """Write a PNG for every planned unit and its catalog row, as apply would; fingerprint -> row."""
    rows = []
    for i, unit in enumerate(project.plan().all_units()):
        data = png_bytes(i)
        path = project.output / unit.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append(
            {
                "fingerprint": unit.fingerprint,
                "dataset": "export-test",
                "class_name": unit.class_name,
                "classes": list(unit.classes),
                "label": unit.class_name,
                "unit_index": unit.index,
                "seed": unit.seed,
                "prompt": unit.prompt,
                "negative_prompt": unit.negative,
                "model_name": unit.key.model.name,
                "model_source": unit.key.model.source,
                "scheduler": unit.key.scheduler,
                "width": unit.key.width,
                "height": unit.key.height,
                "steps": unit.key.steps,
                "guidance": unit.key.guidance,
                "path": unit.relpath,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "canonical": unit.canonical(),
            }
        )
    Catalog(project.output).append_images([ImageRecord(**r) for r in rows], "run-1")
    return {r["fingerprint"]: r for r in rows}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    return Project(write_spec(tmp_path))


@pytest.fixture
def rows(project: Project) -> dict[str, dict[str, Any]]:
    return record_images(project)


def reject(project: Project, fingerprint: str, passed: bool = False, run_id: str = "filter-run") -> None:
    verdicts = pa.table(
        {
            "fingerprint": [fingerprint],
            "class_name": ["zero"],
            "filter": ["classifier"],
            "config_hash": ["x"],
            "passed": [passed],
            "value": [0.1],
        }
    )
    Catalog(project.output).append_stage("filters", verdicts, run_id)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def review(project: Project, fingerprint: str, decision: str, session: str = "review-1") -> None:
    """A person's decision, as `diffspec review` appends it (latest wins, overrules filters)."""
    table = pa.Table.from_pylist(
        [
            {
                "fingerprint": fingerprint,
                "class_name": None,
                "decision": decision,
                "session_id": session,
                "created_at": utcnow(),
            }
        ],
        schema=REVIEW_SCHEMA,
    )
    Catalog(project.output).append_stage(REVIEW_TABLE, table, session)


def sha256_tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) by its sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
