"""What running on Ray costs: the same plan on a local Ray with 2 CPU actors against the
processes executor with 2 worker processes, in one run.

    python bench/ray_overhead.py                       # 96 images, 64x64, DDIM 20 steps, batch 4
    python bench/ray_overhead.py --images 8 --size 32 --steps 2 --rounds 1   # a functional smoke run

Three ways, each on a fresh output with a tiny random-weight SD pipeline (``build_tiny``):

(p) ``apply`` with the processes executor, 2 workers (``--workers 2``);
(r) ``apply --executor ray`` with 2 CPU actors, the executor starting a local Ray for the run and
    stopping it after (what ``diffspec apply --executor ray`` costs on one machine);
(w) the same on a Ray session already running (a cluster that is up; the Python API with the
    caller's ``ray.init``);
(n) with ``--ways prwn``: as (r) with ``budget.driver_lane: false`` (actors only), to show what
    the driver's lane buys.

Each figure is the median of ``--rounds`` interleaved rounds (p, r, w; then r, w, p; ...), so a
neighbour's load on a shared machine falls on every way alike. Prints each time, r/p and w/p
(target <= 1.25 on a 2-core machine where Ray's own processes compete for the cores), the time
to the first recorded image of each (from the run's ``timing`` event), where a Ray run's time
goes before that image (the ``ray_start``, ``worker_ready`` and ``load`` events of its log), and
checks that all ways made the same rows (fingerprints and sha256). Last, it measures the fixed
CPU a local Ray run pays beyond (p), Ray's processes and one more worker's imports, and the
floor that puts under r/p on this machine. Ray runs with
authentication and its dashboard off and its temporary folder in a short folder of this run's
own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
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

WAYS = "prw"
LABELS = {
    "p": "(p) processes, 2 workers:           ",
    "r": "(r) ray, 2 actors, local Ray started:",
    "w": "(w) ray, 2 actors, Ray already up:   ",
    "n": "(n) as (r), driver_lane: false:      ",
}


@dataclass(frozen=True)
class Measured:
    seconds: float
    first: float  # seconds to the first recorded image (the run's `timing` event)
    ray_start: float  # seconds to start or join Ray (`ray_start`); 0 for processes
    actors_ready: float  # seconds until the last actor answered (`worker_ready`)
    load: float  # the slowest pipeline load of an actor (`load`)
    lane_batches: float  # batches the driver's lane ran while the actors started (`driver_lane`)
    per_image: float  # median generation seconds per image (the rows' `seconds`): the steady state


def write_spec(
    folder: Path, model: Path, images: int, batch: int, size: int, steps: int, output: str, lane: bool = True
) -> Path:
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
        budget: {{devices: cpu, max_batch: {batch}, workers: 2, driver_lane: {str(lane).lower()}}}
        classes:
          things: {{target: {images}, prompt: "a photo of a {{thing}}", vars: {{thing: [cat, dog, car, tree]}}}}
        """),
        encoding="utf-8",
    )
    return spec


def run(spec: Path, executor: str) -> tuple[Measured, dict[str, str]]:
    """What one apply took, and the rows it made (fingerprint -> sha256)."""
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
    log = json.loads(finished["log"])

    lanes = [e for e in log if e["event"] == "driver_lane" and "batches" in e]
    lane_worker = lanes[0]["worker"] if lanes else None

    def slowest(kind: str) -> float:
        return max(
            (
                float(e["seconds"])
                for e in log
                if e["event"] == kind and (lane_worker is None or e.get("worker") != lane_worker)
            ),
            default=0.0,
        )

    timing = next(e for e in log if e["event"] == "timing")
    live = catalog.live_images(["fingerprint", "sha256", "seconds"]).to_pylist()
    rows = {r["fingerprint"]: r["sha256"] for r in live}
    per_image = median([float(r["seconds"]) for r in live if r["seconds"] is not None])
    measured = Measured(
        seconds,
        float(timing["first"]),
        slowest("ray_start"),
        slowest("worker_ready"),
        slowest("load"),
        float(lanes[0]["batches"]) if lanes else 0.0,
        per_image,
    )
    return measured, rows


def init_ray(short: str, name: str) -> None:
    """A local Ray of this bench's own: every core, no dashboard, its files under ``short/name``."""
    import ray

    ray.init(
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _temp_dir=os.path.join(short, name),
    )


def fixed_cpu(short: str, model: Path) -> tuple[float, float]:
    """CPU seconds a Ray run spends that the processes executor does not: Ray's own processes
    (started, then idle for 3 s) and one more worker process importing torch and diffusers and
    loading the pipeline (the processes executor hosts its first worker in the driver)."""
    import subprocess

    import psutil
    import ray

    init_ray(short, "f")
    try:
        time.sleep(3)
        me = psutil.Process()
        ray_cpu = 0.0
        for proc in me.children(recursive=True):
            try:
                t = proc.cpu_times()
                ray_cpu += t.user + t.system
            except psutil.Error:
                pass
    finally:
        ray.shutdown()
    load = (
        "import time\n"
        "from diffusers import StableDiffusionPipeline\n"
        f"StableDiffusionPipeline.from_pretrained({str(model)!r})\n"
        "print(time.process_time())\n"
    )
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, check=True)
    return ray_cpu, float(out.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ways", default=WAYS, help="which ways to run, of p, r, w and n (default prw)")
    args = parser.parse_args()

    import ray

    from diffspec.generate.tiny import build_tiny

    work = Path(tempfile.mkdtemp(prefix="diffspec-ray-bench-"))
    short = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Unix socket paths: ~107 characters at most
    os.environ["TMPDIR"] = short  # where a Ray started by the executor keeps its files
    os.makedirs(os.path.join(short, "ray"), exist_ok=True)
    try:
        model = build_tiny("sd", "txt2img", work / "tiny")
        ways = "".join(w for w in "prwn" if w in args.ways)
        if "p" not in ways or len(ways) < 2:
            parser.error("--ways needs p and at least one Ray way")
        specs = {
            k: write_spec(work, model, args.images, args.batch, args.size, args.steps, f"out-{k}", lane=k != "n")
            for k in ways
        }
        measured: dict[str, list[Measured]] = {k: [] for k in ways}
        rows: dict[str, dict[str, str]] = {}

        def measure(way: str) -> None:
            if way == "w":
                init_ray(short, "w")
                try:
                    m, made = run(specs[way], "ray")
                finally:
                    ray.shutdown()
            else:
                m, made = run(specs[way], "processes" if way == "p" else "ray")
            if way in rows:
                assert rows[way] == made, f"({way}) made other rows in another round"
            rows[way] = made
            measured[way].append(m)
            print(f"  {way}: {m.seconds:.2f}s (first image at {m.first:.2f}s)", flush=True)

        for i in range(args.rounds):
            k = i % len(ways)
            for way in ways[k:] + ways[:k]:
                measure(way)
        assert all(rows[w] == rows["p"] for w in ways), "the executors made different rows"

        def med(way: str, name: str) -> float:
            return median([getattr(m, name) for m in measured[way]])

        p = med("p", "seconds")
        print(
            f"\n{args.images} images {args.size}x{args.size}, {args.steps} steps, batch {args.batch}, "
            f"medians of {args.rounds} interleaved rounds; all ways made identical rows ({len(rows['p'])})"
        )
        for way in ways:
            print(
                f"{LABELS[way]} {med(way, 'seconds'):8.2f}s  first image {med(way, 'first'):.2f}s  "
                f"generating {med(way, 'per_image'):.3f}s per image"
            )
        ratios = "   ".join(f"{w}/p = {med(w, 'seconds') / p:.3f}" for w in ways if w != "p")
        verdict = (
            ""
            if "r" not in ways
            else f"   (target r/p <= 1.25: {'met' if med('r', 'seconds') / p <= 1.25 else 'MISSED'})"
        )
        print(ratios + verdict)
        print("before the first image of a Ray run (medians):")
        for way in ways.replace("p", ""):
            print(
                f"  ({way}) Ray start {med(way, 'ray_start'):.2f}s, actors ready {med(way, 'actors_ready'):.2f}s "
                f"after they were asked for, slowest actor pipeline load {med(way, 'load'):.2f}s; "
                f"the driver's lane ran {med(way, 'lane_batches'):.0f} batches meanwhile"
            )
        ray_cpu, import_cpu = fixed_cpu(short, model)
        cores = os.cpu_count() or 2
        extra = ray_cpu + import_cpu
        print(
            f"fixed CPU a local Ray run pays beyond (p): Ray's processes {ray_cpu:.1f} s + one more worker "
            f"importing torch/diffusers and loading {import_cpu:.1f} s = {extra:.1f} CPU s, "
            f"at least {extra / cores:.1f} s of wall on {cores} cores, so r/p is about {(p + extra / cores) / p:.2f} at best here; "
            + "; ".join(f"{w} - p measured {med(w, 'seconds') - p:.1f} s" for w in ways if w != "p")
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(short, ignore_errors=True)


if __name__ == "__main__":
    main()
