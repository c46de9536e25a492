"""What running on Ray costs: the same plan on a local Ray with 2 CPU actors against the
processes executor with 2 worker processes, in one run.

    python bench/ray_overhead.py                       # 96 images, 64x64, DDIM 20 steps, batch 4
    python bench/ray_overhead.py --images 8 --size 32 --steps 2 --repeats 1   # a functional smoke run

Three ways, each on a fresh output with a tiny random-weight SD pipeline (``build_tiny``):

(p) ``apply`` with the processes executor, 2 workers (``--workers 2``);
(r) ``apply --executor ray`` with 2 CPU actors, the executor starting a local Ray for the run and
    stopping it after (what ``diffspec apply --executor ray`` costs on one machine);
(w) the same on a Ray session already running (a cluster that is up; the Python API with the
    caller's ``ray.init``).

Prints each time (best of ``--repeats``, in rotating order), r/p and w/p (target <= 1.25 on a
2-core machine where Ray's own processes compete for the cores), the time to the first
recorded image of each (from the run's ``timing`` event), and checks that all three made the
same rows (fingerprints and sha256). Ray runs with authentication and its dashboard off and
its temporary folder in a short folder of this run's own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ["RAY_AUTH_MODE"] = "disabled"
# Actor processes import diffspec from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


def write_spec(folder: Path, model: Path, images: int, batch: int, size: int, steps: int, output: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f"{output}.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: rayoverhead
        output: {output}
        models:
          tiny: {{source: "{model}", scheduler: ddim}}
        defaults: {{model: tiny, size: [{size}, {size}], steps: {steps}, guidance: 7.5, seed: 5, negative: "blurry"}}
        budget: {{devices: cpu, max_batch: {batch}, workers: 2}}
        classes:
          things: {{target: {images}, prompt: "a photo of a {{thing}}", vars: {{thing: [cat, dog, car, tree]}}}}
        """),
        encoding="utf-8",
    )
    return spec


def run(spec: Path, executor: str) -> tuple[float, float, dict[str, str]]:
    """(seconds, seconds to the first recorded image, fingerprint -> sha256)."""
    from diffspec.catalog.store import Catalog
    from diffspec.project import Project

    project = Project(spec)
    shutil.rmtree(project.output, ignore_errors=True)
    project = Project(spec)
    t0 = time.perf_counter()
    result = project.apply(project.plan(executor=executor, workers=2), progress=False, stages=False)
    seconds = time.perf_counter() - t0
    assert result.failed == 0 and result.made == result.planned, result
    catalog = Catalog(project.output)
    finished = [r for r in catalog.runs() if r["phase"] == "finished"][-1]
    timing = [e for e in json.loads(finished["log"]) if e["event"] == "timing"][0]
    rows = {r["fingerprint"]: r["sha256"] for r in catalog.live_images(["fingerprint", "sha256"]).to_pylist()}
    return seconds, float(timing["first"]), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import ray

    from diffspec.generate.tiny import build_tiny

    work = Path(tempfile.mkdtemp(prefix="diffspec-ray-bench-"))
    short = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Unix socket paths: ~107 characters at most
    os.environ["TMPDIR"] = short  # where a Ray started by the executor keeps its files
    os.makedirs(os.path.join(short, "ray"), exist_ok=True)
    try:
        model = build_tiny("sd", "txt2img", work / "tiny")
        specs = {k: write_spec(work, model, args.images, args.batch, args.size, args.steps, f"out-{k}") for k in "prw"}
        best: dict[str, tuple[float, float]] = {}
        rows: dict[str, dict[str, str]] = {}

        def measure(way: str) -> None:
            if way == "w":
                ray.init(
                    num_cpus=os.cpu_count() or 2,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    _temp_dir=os.path.join(short, "w"),
                )
                try:
                    seconds, first, made = run(specs[way], "ray")
                finally:
                    ray.shutdown()
            else:
                seconds, first, made = run(specs[way], "processes" if way == "p" else "ray")
            rows[way] = made
            if way not in best or seconds < best[way][0]:
                best[way] = (seconds, first)
            print(f"  {way}: {seconds:.2f}s (first image at {first:.2f}s)", flush=True)

        order = list("prw")
        for i in range(args.repeats):
            for way in order[i % 3 :] + order[: i % 3]:
                measure(way)
        assert rows["p"] == rows["r"] == rows["w"], "the executors made different rows"
        p, r, w = best["p"][0], best["r"][0], best["w"][0]
        print(
            f"\n{args.images} images {args.size}x{args.size}, {args.steps} steps, batch {args.batch}, "
            f"best of {args.repeats}; all three made identical rows ({len(rows['p'])})"
        )
        print(f"(p) processes, 2 workers:            {p:8.2f}s  first image {best['p'][1]:.2f}s")
        print(f"(r) ray, 2 actors, local Ray started: {r:8.2f}s  first image {best['r'][1]:.2f}s")
        print(f"(w) ray, 2 actors, Ray already up:    {w:8.2f}s  first image {best['w'][1]:.2f}s")
        print(f"r/p = {r / p:.3f}   w/p = {w / p:.3f}   (target <= 1.25)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(short, ignore_errors=True)


if __name__ == "__main__":
    main()
