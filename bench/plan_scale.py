"""Plan a spec of 1,000,000 units against a catalog already holding 1,000,000 rows.

Prints the plan time, the floor (sha256 of the same 1,000,000 canonical unit strings, measured
in the same run), their ratio and the peak RSS. Targets: ratio ≤ 3, peak RSS ≤ 2 GiB.

    python bench/plan_scale.py [--units 1000000] [--classes 100]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

SPEC = """\
version: 1
dataset: scale
output: out
models:
  sd15: {{source: runwayml/stable-diffusion-v1-5, revision: 1d0c4ebf6ff58a5caecab40fa1406526bca4b5b9, scheduler: ddim}}
defaults: {{model: sd15, size: [512, 512], steps: 30, guidance: 7.5, seed: 7, negative: "blurry, low quality"}}
budget: {{vram_gb: 24, max_batch: 8}}
vars:
  lighting: [natural light, studio light, dim kitchen light, golden hour]
  angle: [top view, side view, close-up]
classes:
{classes}
"""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    per_class = args.units // args.classes

    from diffspec.catalog.store import Catalog
    from diffspec.plan.diff import build_plan
    from diffspec.spec.loader import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = [f"  class_{i:03d}: {{target: {per_class}, prompt: \"a photo of food {i}, {{lighting}}, {{angle}}\"}}" for i in range(args.classes)]
        spec_path = root / "scale.yaml"
        spec_path.write_text(SPEC.format(classes="\n".join(lines)))

        # Setup (untimed): a catalog holding every unit of the spec, written as one run's parts.
        loaded = load_spec(spec_path)
        first = build_plan(loaded, Catalog(loaded.output))
        total = sum(len(u) for u in first.units.values())
        import pyarrow as pa

        catalog = Catalog(loaded.output)
        now = datetime.now(timezone.utc)
        for name, units in first.units.items():
            n = len(units)
            table = pa.table({
                "fingerprint": units.fingerprints,
                "dataset": ["scale"] * n,
                "class_name": [name] * n,
                "path": [f"images/{name}/{fp}.png" for fp in units.fingerprints],
                "model_source": ["runwayml/stable-diffusion-v1-5"] * n,
                "width": pa.array([512] * n, pa.int32()),
                "height": pa.array([512] * n, pa.int32()),
                "steps": pa.array([30] * n, pa.int32()),
                "seconds": [1.0] * n,
                "created_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            })
            from diffspec.catalog.schema import IMAGES

            full = pa.table({f.name: table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type) for f in IMAGES}, schema=IMAGES)
            catalog._write_part(catalog.table_dir("images"), full, "bench", tag=name)
        canonical = [u.canonical().encode("utf-8") for u in first.all_units()]
        del first
        gc.collect()

        # Floor: sha256 of the same canonical strings.
        t0 = time.perf_counter()
        digests = [hashlib.sha256(text).hexdigest() for text in canonical]
        floor = time.perf_counter() - t0
        del canonical, digests
        gc.collect()

        # The plan: load + compile + diff against the 1M-row catalog.
        t0 = time.perf_counter()
        plan = build_plan(load_spec(spec_path), Catalog(loaded.output))
        plan_time = time.perf_counter() - t0
        assert plan.total_keep == total and plan.total_create == 0, (plan.total_keep, plan.total_create)
        del plan
        gc.collect()

        # Also shown (not the target): every target raised by 1%, so the plan reads the
        # recorded durations to estimate the new images' time.
        raised = [line.replace(f"target: {per_class},", f"target: {per_class + per_class // 100},") for line in lines]
        spec_path.write_text(SPEC.format(classes="\n".join(raised)))
        t0 = time.perf_counter()
        plan = build_plan(load_spec(spec_path), Catalog(loaded.output))
        raised_time = time.perf_counter() - t0
        raised_create = plan.total_create
        assert plan.total_keep == total and raised_create == args.classes * (per_class // 100), raised_create

    ratio = plan_time / floor
    rss = peak_rss_mib()
    print(f"units planned:        {total:,}")
    print(f"catalog rows:         {total:,}")
    print(f"plan time:            {plan_time:.2f} s")
    print(f"sha256 floor:         {floor:.2f} s")
    print(f"ratio plan/floor:     {ratio:.2f}  (target <= 3)")
    print(f"targets raised 1%:    {raised_time:.2f} s, ratio {raised_time / floor:.2f}  ({raised_create:,} to create; reads recorded durations)")
    print(f"peak RSS:             {rss:.0f} MiB  (target <= 2048)")
    return 0 if ratio <= 3 and rss <= 2048 else 1


if __name__ == "__main__":
    sys.exit(main())
