"""How `plan` scales: a spec of N units against a catalog already holding N rows, for several N.

For each size it prints the plan time (load + compile + diff), the floor (sha256 of the same N
canonical unit strings: the least any content-addressed planner must do), their ratio, the
peak RSS of the planning process, and the plan time per unit relative to the smallest size, so
growth that is worse than linear shows. Each figure is the median of ``--rounds`` interleaved
rounds; every round runs in a fresh process (so peak RSS is the plan's own, not the set-up's).
Targets at 1M units: ratio <= 3, peak RSS <= 2 GiB; growth no worse than linear.

    python bench/plan_scale.py                       # 100k, 1M and 4M units, 3 rounds
    python bench/plan_scale.py --sizes 1000000 --rounds 5
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import resource
import statistics
import subprocess
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
CLASSES = 100
CHUNK = 100_000  # canonical strings hashed per chunk by the floor: bounded memory at any size


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(folder: Path, units: int) -> None:
    """A spec of ``units`` units and a catalog holding every one of them (untimed)."""
    import pyarrow as pa

    from diffspec.catalog.schema import IMAGES
    from diffspec.catalog.store import Catalog
    from diffspec.plan.diff import build_plan
    from diffspec.spec.loader import load_spec

    per_class = units // CLASSES
    lines = [
        f'  class_{i:03d}: {{target: {per_class}, prompt: "a photo of food {i}, {{lighting}}, {{angle}}"}}'
        for i in range(CLASSES)
    ]
    spec_path = folder / "scale.yaml"
    spec_path.write_text(SPEC.format(classes="\n".join(lines)))
    loaded = load_spec(spec_path)
    first = build_plan(loaded, Catalog(loaded.output))
    catalog = Catalog(loaded.output)
    now = datetime.now(timezone.utc)
    for name, class_units in first.units.items():
        n = len(class_units)
        table = pa.table(
            {
                "fingerprint": class_units.fingerprints,
                "dataset": ["scale"] * n,
                "class_name": [name] * n,
                "path": [f"images/{name}/{fp}.png" for fp in class_units.fingerprints],
                "model_source": ["runwayml/stable-diffusion-v1-5"] * n,
                "width": pa.array([512] * n, pa.int32()),
                "height": pa.array([512] * n, pa.int32()),
                "steps": pa.array([30] * n, pa.int32()),
                "seconds": [1.0] * n,
                "created_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            }
        )
        full = pa.table(
            {f.name: table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type) for f in IMAGES},
            schema=IMAGES,
        )
        catalog._write_part(catalog.table_dir("images"), full, "bench", tag=name)
    (folder / "total.txt").write_text(str(sum(len(u) for u in first.units.values())))


def floor(folder: Path) -> dict[str, float]:
    """sha256 of every unit's canonical text, timed over the hashing only."""
    from diffspec.plan.compile import compile_spec
    from diffspec.spec.loader import load_spec

    compiled = compile_spec(load_spec(folder / "scale.yaml"))
    seconds = 0.0
    batch: list[bytes] = []

    def hash_batch() -> float:
        t0 = time.perf_counter()
        for text in batch:
            hashlib.sha256(text).hexdigest()
        return time.perf_counter() - t0

    for units in compiled.values():
        for unit in units.units():
            batch.append(unit.canonical().encode("utf-8"))
            if len(batch) >= CHUNK:
                seconds += hash_batch()
                batch.clear()
    seconds += hash_batch()
    return {"floor": seconds}


def plan(folder: Path) -> dict[str, float]:
    from diffspec.catalog.store import Catalog
    from diffspec.plan.diff import build_plan
    from diffspec.spec.loader import load_spec

    total = int((folder / "total.txt").read_text())
    gc.collect()
    t0 = time.perf_counter()
    loaded = load_spec(folder / "scale.yaml")
    result = build_plan(loaded, Catalog(loaded.output))
    seconds = time.perf_counter() - t0
    assert result.total_keep == total and result.total_create == 0, (result.total_keep, result.total_create)
    return {"plan": seconds, "rss": peak_rss_mib()}


def child(mode: str, folder: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, f"--{mode}", str(folder)], capture_output=True, text=True, cwd=folder, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000,4000000", help="comma-separated unit counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        setup(args.setup, args.units)
        print("{}")
        return 0
    if args.floor:
        print(json.dumps(floor(args.floor)))
        return 0
    if args.plan:
        print(json.dumps(plan(args.plan)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="diffspec-plan-scale-") as tmp:
            folder = Path(tmp)
            out = subprocess.run(
                [sys.executable, __file__, "--setup", str(folder), "--units", str(size)],
                capture_output=True,
                text=True,
                cwd=folder,
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"setup failed:\n{out.stderr}")
            plans, floors, rss = [], [], []
            for _ in range(args.rounds):  # interleaved: a slow moment of the machine hits both
                floors.append(child("floor", folder)["floor"])
                p = child("plan", folder)
                plans.append(p["plan"])
                rss.append(p["rss"])
            row = {
                "units": size,
                "plan": statistics.median(plans),
                "floor": statistics.median(floors),
                "rss": statistics.median(rss),
            }
            row["ratio"] = row["plan"] / row["floor"]
            rows.append(row)
            print(
                f"{size:>10,} units: plan {row['plan']:.2f}s (rounds {', '.join(f'{p:.2f}' for p in plans)}), "
                f"floor {row['floor']:.2f}s, ratio {row['ratio']:.2f}, peak RSS {row['rss']:.0f} MiB",
                flush=True,
            )
    base = rows[0]
    print(f"\n{'units':>10}  {'plan s':>7}  {'floor s':>7}  {'ratio':>5}  {'peak RSS MiB':>12}  {'growth':>6}")
    ok = True
    for row in rows:
        growth = (row["plan"] / row["units"]) / (base["plan"] / base["units"])
        print(
            f"{row['units']:>10,}  {row['plan']:>7.2f}  {row['floor']:>7.2f}  {row['ratio']:>5.2f}  {row['rss']:>12.0f}  "
            f"{growth:>6.2f}"
        )
        if row["units"] == 1_000_000:
            ok = ok and row["ratio"] <= 3 and row["rss"] <= 2048
    print(
        "\ngrowth: plan time per unit relative to the smallest size (1.00 = linear). "
        "Targets at 1M: ratio <= 3, peak RSS <= 2048 MiB"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
