"""1,000 images of the quickstart model (builtin:digits) through `diffspec apply`, against the
bare model call in the same run.

    python bench/quickstart_speed.py [--images 1000] [--repeats 2]

(a) `Project(spec).plan()` + `.apply()` on a fresh output: plan, lock, batches, PNG with
    provenance, atomic durable writes, catalog parts, run records (the filters stage off, so
    both sides make the same images and nothing else);
(b) the bare model: `DigitsPipeline.from_pretrained(...)` and one call per batch of the same
    size, same prompts, steps, guidance and one generator per image; no I/O.
Prints images/s of both and the ratio a / b (target <= 1.03): medians of --repeats (5)
interleaved rounds, the order alternating so neither side always runs first. Every run is a
fresh process, as a user's `diffspec apply` or script is: neither side inherits the other's
threads, allocator state or imports (torch and diffusers are imported before the clock starts
in both).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_spec(folder: Path, images: int, batch: int) -> Path:
    per_class = images // 10
    classes = "\n".join(
        f'  {name}: {{target: {per_class}, prompt: "a {{weight}} {{slant}} handwritten {name}"}}'
        for name in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    )
    spec = folder / "speed.yaml"
    spec.write_text(
        textwrap.dedent("""\
        version: 1
        dataset: digits-speed
        output: out
        models:
          digits: {source: "builtin:digits", scheduler: ddim}
        defaults: {model: digits, size: [32, 32], steps: 20, guidance: 3.0, seed: 2024}
        budget: {devices: cpu, max_batch: %d}
        vars:
          weight: [thin, thick]
          slant: [upright, slanted]
        classes:
        """)
        % batch
        + classes
        + "\n",
        encoding="utf-8",
    )
    return spec


def run_apply(spec: Path) -> tuple[float, int]:
    from diffspec.project import Project

    shutil.rmtree(spec.parent / "out", ignore_errors=True)
    t0 = time.perf_counter()
    project = Project(spec)
    result = project.apply(project.plan(), progress=False, stages=False)
    return time.perf_counter() - t0, result.made


def run_bare(spec: Path, batch: int) -> tuple[float, int]:
    import torch

    from diffspec.generate.builtin.digits import DigitsPipeline, builtin_path
    from diffspec.project import Project

    units = list(Project(spec).plan().all_units())  # the same prompts and seeds (untimed)
    t0 = time.perf_counter()
    pipe = DigitsPipeline.from_pretrained(builtin_path("digits"))
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    made = 0
    for i in range(0, len(units), batch):
        chunk = units[i : i + batch]
        out = pipe(
            prompt=[u.prompt for u in chunk],
            negative_prompt=None,
            num_inference_steps=20,
            guidance_scale=3.0,
            generator=[torch.Generator("cpu").manual_seed(u.seed) for u in chunk],
            height=32,
            width=32,
        )
        made += len(out.images)
    return time.perf_counter() - t0, made


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", choices=("apply", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one timed run, printed as "seconds made"
        import torch  # noqa: F401  (imported before timing, for both sides)

        import diffspec.generate.builtin.digits  # noqa: F401  (diffusers' model modules: 3 s of imports)

        t, n = run_apply(args.spec) if args.one == "apply" else run_bare(args.spec, args.batch)
        print(f"{t} {n}")
        return 0

    def child(side: str, spec: Path) -> tuple[float, int]:
        out = subprocess.run(
            [sys.executable, __file__, "--one", side, "--spec", str(spec), "--batch", str(args.batch)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
        seconds, made = out.stdout.split()[-2:]
        return float(seconds), int(made)

    with tempfile.TemporaryDirectory() as tmp:
        spec = write_spec(Path(tmp), args.images, args.batch)
        apply_times, bare_times = [], []
        made = made_bare = 0
        for r in range(args.repeats):
            if r % 2:
                t_bare, made_bare = child("bare", spec)
                bare_times.append(t_bare)
            t, made = child("apply", spec)
            apply_times.append(t)
            if not r % 2:
                t_bare, made_bare = child("bare", spec)
                bare_times.append(t_bare)
            print(f"  round {r + 1}: apply {apply_times[-1]:.2f}s  bare {bare_times[-1]:.2f}s", flush=True)
        assert made == made_bare == args.images // 10 * 10, (made, made_bare)
    a, b = statistics.median(apply_times), statistics.median(bare_times)
    print(f"images:               {made}")
    print(f"(a) diffspec apply:   {a:.2f} s  ({made / a:.1f} images/s)")
    print(f"(b) bare model call:  {b:.2f} s  ({made / b:.1f} images/s)")
    print(f"ratio a / b:          {a / b:.3f}  (target <= 1.03, medians of {args.repeats} rounds)")
    return 0 if a / b <= 1.03 else 1


if __name__ == "__main__":
    sys.exit(main())
