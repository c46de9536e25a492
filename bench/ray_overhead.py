"""What running on Ray costs: the same plan on a local Ray with 2 CPU actors against the
processes executor with 2 worker processes, in one run.

    python bench/ray_overhead.py                       # 96 images, 64x64, DDIM 20 steps, batch 4
    python bench/ray_overhead.py --images 8 --size 32 --steps 2 --rounds 1   # a functional smoke run

Three ways, each on a fresh output with a tiny random-weight SD pipeline (``build_tiny``):

(p) ``apply`` with the processes executor, 2 workers (``--workers 2``);
(r) ``apply --executor ray`` with 2 CPU actors, the executor starting a local Ray for the run and
    stopping it after (what ``diffspec apply --executor ray`` costs on one machine);
(w) the same on a Ray session already running (a cluster that is up; the Python API with the
    caller's ``ray.init``).

Each figure is the median of ``--rounds`` interleaved rounds (p, r, w; then r, w, p; ...), so a
neighbour's load on a shared machine falls on every way alike. Prints each time, r/p and w/p
(target <= 1.25 on a 2-core machine where Ray's own processes compete for the cores), the time
to the first recorded image of each (from the run's ``timing`` event), where a Ray run's time
goes before that image (the ``ray_start``, ``worker_ready`` and ``load`` events of its log), and
checks that all three made the same rows (fingerprints and sha256). Ray runs with
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
}


@dataclass(frozen=True)
class Measured:
    seconds: float
    first: float  # seconds to the first recorded image (the run's `timing` event)
    ray_start: float  # seconds to start or join Ray (`ray_start`); 0 for processes
    actors_ready: float  # seconds until the last actor answered (`worker_ready`)
    load: float  # the slowest pipeline load of the run (`load`)


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

    def slowest(kind: str) -> float:
        return max((float(e["seconds"]) for e in log if e["event"] == kind), default=0.0)

    timing = next(e for e in log if e["event"] == "timing")
    rows = {r["fingerprint"]: r["sha256"] for r in catalog.live_images(["fingerprint", "sha256"]).to_pylist()}
    measured = Measured(seconds, float(timing["first"]), slowest("ray_start"), slowest("worker_ready"), slowest("load"))
    return measured, rows


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import ray

    from diffspec.generate.tiny import build_tiny

    work = Path(tempfile.mkdtemp(prefix="diffspec-ray-bench-"))
    short = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Unix socket paths: ~107 characters at most
    os.environ["TMPDIR"] = short  # where a Ray started by the executor keeps its files
    os.makedirs(os.path.join(short, "ray"), exist_ok=True)
    try:
        model = build_tiny("sd", "txt2img", work / "tiny")
        specs = {k: write_spec(work, model, args.images, args.batch, args.size, args.steps, f"out-{k}") for k in WAYS}
        measured: dict[str, list[Measured]] = {k: [] for k in WAYS}
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
            for way in WAYS[i % 3 :] + WAYS[: i % 3]:
                measure(way)
        assert rows["p"] == rows["r"] == rows["w"], "the executors made different rows"

        def med(way: str, name: str) -> float:
            return median([getattr(m, name) for m in measured[way]])

        p, r, w = med("p", "seconds"), med("r", "seconds"), med("w", "seconds")
        print(
            f"\n{args.images} images {args.size}x{args.size}, {args.steps} steps, batch {args.batch}, "
            f"medians of {args.rounds} interleaved rounds; all three made identical rows ({len(rows['p'])})"
        )
        for way in WAYS:
            print(f"{LABELS[way]} {med(way, 'seconds'):8.2f}s  first image {med(way, 'first'):.2f}s")
        verdict = "met" if r / p <= 1.25 else "MISSED"
        print(f"r/p = {r / p:.3f}   w/p = {w / p:.3f}   (target r/p <= 1.25: {verdict})")
        print("before the first image of a Ray run (medians):")
        for way in "rw":
            print(
                f"  ({way}) Ray start {med(way, 'ray_start'):.2f}s, actors ready {med(way, 'actors_ready'):.2f}s "
                f"after they were asked for, slowest pipeline load {med(way, 'load'):.2f}s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(short, ignore_errors=True)


if __name__ == "__main__":
    main()
