"""The HTML report on a real Parquet catalog with real PNG files (written here, no model run):
per-class counts are the verdicts' counts, every filter's values are in its histogram, pages
split at ``grid_per_class``, thumbnails are made once and reused, masks are drawn over them."""

from __future__ import annotations

import hashlib
import io
import re
import textwrap
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from diffspec.catalog.records import ImageRecord
from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import REVIEW_SCHEMA, REVIEW_TABLE, verdicts
from diffspec.project import Project
from diffspec.stages.report import build_report

Image = pytest.importorskip("PIL.Image")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CLASSES = {"zero": 5, "one": 3}


def _spec(folder: Path, per_page: int) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: report-test
        output: out
        models:
          digits: {{source: "builtin:digits", scheduler: ddim}}
        defaults: {{model: digits, size: [8, 8]}}
        classes:
          zero: {{target: {CLASSES["zero"]}, prompt: "a zero"}}
          one: {{target: {CLASSES["one"]}, prompt: "a one"}}
        stages:
          review: {{grid_per_class: {per_page}}}
        """)
    )
    return spec


def _catalog(project: Project) -> dict[str, list[str]]:
    """PNGs and rows for every class, a filter verdict per image (every third fails), and a
    person's decisions: overrule the first failure, reject the first pass. Class -> fingerprints."""
    catalog = Catalog(project.output)
    records, fps = [], {}
    for cls, n in CLASSES.items():
        for i in range(n):
            fp = hashlib.sha256(f"{cls}-{i}".encode()).hexdigest()
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 40 % 256, 80, 200)).save(buffer, format="PNG")
            path = project.output / "images" / cls / f"{fp}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buffer.getvalue())
            records.append(
                ImageRecord(
                    fingerprint=fp,
                    class_name=cls,
                    path=f"images/{cls}/{fp}.png",
                    unit_index=i,
                    seed=i,
                    prompt=f"a {cls}",
                    width=8,
                    height=8,
                    sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
                )
            )
            fps.setdefault(cls, []).append(fp)
    catalog.append_images(records, "run-1")
    rows = [
        {"fingerprint": r.fingerprint, "class_name": r.class_name, "filter": "sharpness", "config_hash": "h"}
        | {"passed": k % 3 != 0, "value": float(k), "run_id": "f", "created_at": T0}
        for k, r in enumerate(records)
    ]
    catalog.append_stage("filters", pa.Table.from_pylist(rows), "f")
    failed = [r["fingerprint"] for r in rows if not r["passed"]]
    passed = [r["fingerprint"] for r in rows if r["passed"]]
    review = [(failed[0], "accept"), (passed[0], "reject")]
    table = pa.Table.from_pylist(
        [
            {
                "fingerprint": fp,
                "class_name": "zero",
                "decision": d,
                "session_id": "s",
                "created_at": T0 + timedelta(seconds=i + 1),
            }
            for i, (fp, d) in enumerate(review)
        ],
        schema=REVIEW_SCHEMA,
    )
    catalog.append_stage(REVIEW_TABLE, table, "s")
    return fps


class _Tables(HTMLParser):
    """The text of every table row of a page, with the stdlib's HTML parser."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _rows(path: Path) -> list[list[str]]:
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.rows


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(_spec(tmp_path, per_page=2))


def test_counts_per_class_are_the_verdicts_counts(project: Project) -> None:
    fps = _catalog(project)
    index = project.report()
    header, *body = _rows(index)
    table = {row[0]: dict(zip(header, row)) for row in body}
    states = verdicts(project.catalog)
    for cls, members in fps.items():
        got = [states[fp].state if fp in states else "unreviewed" for fp in members]
        by_filter = sum(1 for fp in members if fp in states and states[fp].rejected and states[fp].by == "filter")
        assert table[cls]["accepted"] == str(got.count("accepted"))
        assert table[cls]["rejected"] == str(got.count("rejected"))
        assert table[cls]["unreviewed"] == str(got.count("unreviewed"))
        assert table[cls]["of which by a filter"] == str(by_filter)
    assert table["zero"]["accepted"] == "1" and table["zero"]["images"] == "5"  # the person overruled the filter


def test_every_filter_value_is_in_its_class_histogram(project: Project) -> None:
    _catalog(project)
    text = project.report().read_text(encoding="utf-8")
    svgs = re.findall(r"<svg class='hist'.*?</svg>", text)
    assert len(svgs) == len(CLASSES)  # one filter, one histogram per class
    for svg, (cls, n) in zip(svgs, CLASSES.items()):
        assert f"{cls}: sharpness ({n} images)" in svg
        counts = [(int(p), int(f)) for p, f in re.findall(r": (\d+) passed, (\d+) failed", svg)]
        assert sum(p + f for p, f in counts) == n and any(f for _, f in counts)


def test_pages_split_at_grid_per_class_and_thumbnails_are_made_once(project: Project, tmp_path: Path) -> None:
    fps = _catalog(project)
    first = build_report(project.loaded, project.catalog)
    names = sorted(p.name for p in first.pages)
    assert names == [
        "000-zero-0001.html",
        "000-zero-0002.html",
        "000-zero-0003.html",
        "001-one-0001.html",
        "001-one-0002.html",
    ]
    figures = {p.name: p.read_text().count("<figure class=") for p in first.pages}
    assert figures == {n: 1 if n.endswith(("zero-0003.html", "one-0002.html")) else 2 for n in names}
    assert (first.thumbnails_made, first.thumbnails_reused) == (8, 0)
    # Each thumbnail is a JPEG of the image, linked from the page that shows the image.
    page = first.path.parent / "report-pages" / "000-zero-0001.html"
    thumbs = re.findall(r"src='([^']+\.jpg)'", page.read_text())
    assert len(thumbs) == 2
    with Image.open(page.parent / thumbs[0]) as im:
        assert im.format == "JPEG" and im.size == (8, 8)
    assert f"images/zero/{fps['zero'][0]}.png'" in page.read_text()

    again = build_report(project.loaded, project.catalog)
    assert (again.thumbnails_made, again.thumbnails_reused) == (0, 8)
    # Fewer images per page: the pages of the earlier run that are not rewritten are gone.
    fewer = Project(_spec(tmp_path, per_page=10))
    third = build_report(fewer.loaded, fewer.catalog)
    assert sorted(p.name for p in (third.path.parent / "report-pages").iterdir()) == [
        "000-zero-0001.html",
        "001-one-0001.html",
    ]


def test_kept_masks_are_drawn_over_the_thumbnail(project: Project) -> None:
    from diffspec.stages.masks import rle_encode, rle_to_string

    fps = _catalog(project)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 1:4] = True
    rows = [
        {"fingerprint": fps["one"][0], "segment_fingerprint": "s1", "run_id": "seg", "instance": 0, "kept": True}
        | {"rle": rle_to_string(rle_encode(mask)), "width": 8, "height": 8, "label": "one", "score": 0.9}
        | {"box_xyxy": [1.0, 2.0, 4.0, 6.0]},
        {"fingerprint": fps["one"][0], "segment_fingerprint": "s1", "run_id": "seg", "instance": 1, "kept": False}
        | {"rle": rle_to_string(rle_encode(~mask)), "width": 8, "height": 8, "label": "one", "score": 0.2}
        | {"box_xyxy": [0.0, 0.0, 8.0, 8.0]},
    ]
    project.catalog.append_stage("segment", pa.Table.from_pylist(rows), "seg")
    outcome = build_report(project.loaded, project.catalog)
    page = next(p for p in outcome.pages if p.name == "001-one-0001.html")
    overlays = re.findall(r"src='([^']+\.png)' loading='lazy' alt='masks'", page.read_text())
    assert len(overlays) == 1  # only the image with a kept mask
    with Image.open(page.parent / overlays[0]) as im:
        alpha = np.asarray(im.convert("RGBA"))[:, :, 3]
    assert ((alpha > 0) == mask).all()  # the kept mask, not the dropped one
