"""`diffspec report` at scale: a 10,000-image catalog, first run (thumbnails made) and re-run.

    python bench/report_scale.py                       # 10 classes x 1,000 images of 32x32
    python bench/report_scale.py --images 2000 --classes 4

The catalog is written directly with the catalog API (no model run): a PNG and a row per image,
a filter verdict and value per image (a tenth fail), a person's decision on a twentieth, and a
kept mask on a tenth (the segment table), as a real catalog after `apply` and some review holds.

Prints, each the best of ``--repeats`` rounds:
- the baseline: reading what the report shows (:func:`image_facts`, the verdicts, the masks),
  with no HTML and no thumbnails;
- the first report (every thumbnail and mask overlay made, the cache emptied before each round);
- a re-run (every thumbnail reused);
and each as a ratio of the baseline, the page count and the size of the index page.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from PIL import Image  # noqa: E402

from diffspec.catalog.records import ImageRecord  # noqa: E402
from diffspec.catalog.store import Catalog  # noqa: E402
from diffspec.catalog.verdicts import REVIEW_SCHEMA, REVIEW_TABLE  # noqa: E402
from diffspec.project import Project  # noqa: E402
from diffspec.stages.gallery import image_facts, kept_masks  # noqa: E402
from diffspec.stages.masks import rle_encode, rle_to_string  # noqa: E402
from diffspec.stages.report import CACHE_DIR, build_report  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def build(folder: Path, classes: int, per_class: int) -> Project:
    names = [f"c{i:02d}" for i in range(classes)]
    spec = folder / "spec.yaml"
    lines = "\n".join(f'  {n}: {{target: {per_class}, prompt: "a {n}"}}' for n in names)
    spec.write_text(
        textwrap.dedent("""\
        version: 1
        dataset: report-scale
        output: out
        models:
          digits: {source: "builtin:digits"}
        defaults: {model: digits, size: [32, 32]}
        stages:
          review: {grid_per_class: 100}
        classes:
        """)
        + lines
        + "\n"
    )
    project = Project(spec)
    catalog = Catalog(project.output)
    rng = np.random.default_rng(0)
    records, filters, review, segment = [], [], [], []
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 10:22] = True
    rle = rle_to_string(rle_encode(mask))
    for cls in names:
        folder_path = project.output / "images" / cls
        folder_path.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fp = hashlib.sha256(f"{cls}-{i}".encode()).hexdigest()
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L").save(buffer, format="PNG")
            data = buffer.getvalue()
            (folder_path / f"{fp}.png").write_bytes(data)
            records.append(
                ImageRecord(
                    fingerprint=fp,
                    class_name=cls,
                    path=f"images/{cls}/{fp}.png",
                    unit_index=i,
                    seed=i,
                    prompt=f"a {cls}",
                    width=32,
                    height=32,
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
            value = float(rng.random())
            filters.append(
                {
                    "fingerprint": fp,
                    "class_name": cls,
                    "filter": "classifier",
                    "config_hash": "h",
                    "passed": value > 0.1,
                }
                | {"value": value, "run_id": "f", "created_at": T0}
            )
            if i % 20 == 0:
                review.append(
                    {"fingerprint": fp, "class_name": cls, "decision": "reject", "session_id": "s"} | {"created_at": T0}
                )
            if i % 10 == 0:
                segment.append(
                    {"fingerprint": fp, "segment_fingerprint": fp, "run_id": "seg", "instance": 0, "kept": True}
                    | {
                        "rle": rle,
                        "width": 32,
                        "height": 32,
                        "label": cls,
                        "score": 0.9,
                        "box_xyxy": [10.0, 8.0, 22.0, 24.0],
                    }
                )
    catalog.append_images(records, "run-1")
    catalog.append_stage("filters", pa.Table.from_pylist(filters), "f")
    catalog.append_stage(REVIEW_TABLE, pa.Table.from_pylist(review, schema=REVIEW_SCHEMA), "s")
    catalog.append_stage("segment", pa.Table.from_pylist(segment), "seg")
    return project


def best(repeats: int, run, before=None) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-scale-") as tmp:
        started = time.perf_counter()
        project = build(Path(tmp), args.classes, args.images // args.classes)
        print(f"catalog of {args.images} images written in {time.perf_counter() - started:.1f} s")
        cache = project.output / CACHE_DIR

        def read() -> int:
            return len(image_facts(project.catalog)) + len(kept_masks(project.catalog))

        base, _ = best(args.repeats, read)
        first, outcome = best(
            args.repeats, lambda: build_report(project.loaded, project.catalog), lambda: shutil.rmtree(cache, True)
        )
        again, outcome = best(args.repeats, lambda: build_report(project.loaded, project.catalog))
        index = outcome.path.stat().st_size  # type: ignore[attr-defined]
        print(f"baseline, reading what the report shows: {base:.2f} s")
        print(f"first report (thumbnails made):  {first:.2f} s  = {first / base:.1f} x baseline")
        print(f"re-run (thumbnails reused):      {again:.2f} s  = {again / base:.1f} x baseline")
        print(f"re-run / first: {again / first:.2f}")
        print(f"{len(outcome.pages)} pages; index page {index / 1024:.0f} KiB")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
