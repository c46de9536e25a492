"""Kill drill: SIGKILL `diffspec apply` at random moments, restart it, finish, then audit.

    python bench/kill_drill.py                  # 240 units, 12 kills (the full drill)
    python bench/kill_drill.py --units 60 --kills 4 --workers 2

An apply of a tiny random-weight SD pipeline (``build_tiny``) runs as a subprocess
(``python -m diffspec.cli apply spec.yaml -q``) and is SIGKILLed at random moments: every
fourth kill at a random moment of start-up (lock, clean-up, catalog tidy, imports, model
load), the others a random time after the run's first image write. After the kills, a last
apply runs to the end. The audit checks:

* the catalog has exactly the planned number of rows, and no fingerprint twice;
* every row's file exists and its sha256 and size match the row;
* no temp files are left anywhere under the output root;
* images written in all (every attempt to write one, counted by the writer through
  ``DIFFSPEC_WRITE_COUNTER`` before it writes) <= planned + kills x batch size: a kill
  loses at most the one batch that was being written.

With ``--stages`` the spec also runs the segment stage (tiny random-weight Grounding DINO and
SAM built from configs), and every third kill lands while the stage records its batches (a
random moment after a new part of the ``segment`` table appears). The audit then also checks:

* every planned image has exactly one segment unit recorded, by one run only (no unit made
  twice), and no (unit, detection) row twice in the live rows;
* no segment row without its image in the catalog;
* every mask row decodes (COCO RLE) to the area it records.

With ``--filters`` the spec runs the quality filters instead (a tiny random-weight CLIP, real
imagehash, the blank filter), and every third kill lands while they record their batches. The
audit then checks that every (image, filter) verdict the spec asks for is recorded with its
unit's fingerprint (nothing left to plan), that no verdict names an image the catalog lacks, and
that the verdicts recorded twice (a batch measured again after a kill) are at most kills x batch.

Prints the figures and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def write_spec(
    folder: Path,
    model: Path,
    units: int,
    batch: int,
    size: int,
    steps: int,
    workers: int,
    stage_models: tuple[Path, Path] | None = None,
    clip: Path | None = None,
) -> Path:
    spec = folder / "spec.yaml"
    stages = (
        textwrap.dedent(f"""\
        stages:
          segment: {{detector: "{stage_models[0]}", segmenter: "{stage_models[1]}", box_threshold: 0.3, batch_size: 2}}
        """)
        if stage_models
        else ""
    )
    if clip is not None:
        stages = textwrap.dedent(f"""\
        stages:
          filters:
            - clip_score: {{model: "{clip}", min: -1.0, batch_size: 2}}
            - near_duplicate: {{max_hamming: 4}}
            - blank: {{max_std: 2.0}}
        """)
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: kill-drill
        output: out
        models:
          tiny: {{source: "{model}", scheduler: ddim}}
        defaults: {{model: tiny, size: [{size}, {size}], steps: {steps}, guidance: 7.5, seed: 11}}
        budget: {{devices: cpu, max_batch: {batch}, workers: {workers}}}
        classes:
          cats: {{target: {units - units // 2}, prompt: "a photo of a {{animal}}", vars: {{animal: [cat, kitten]}}}}
          dogs: {{target: {units // 2}, prompt: "a photo of a dog, {{light}}", vars: {{light: [daylight, studio light]}}}}
        """)
        + stages,
        encoding="utf-8",
    )
    return spec


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def _start(spec: Path, env: dict[str, str], log: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "diffspec.cli", "apply", str(spec), "-q"],
        cwd=spec.parent,
        env=env,
        stdout=log,
        stderr=log,
    )


def _stage_parts(output: Path, table: str = "segment") -> int:
    folder = output / "catalog" / "stages" / table
    return sum(1 for p in folder.glob("part-*.parquet")) if folder.is_dir() else 0


def audit_filters(output: Path, spec: Path, kills: int, batch: int) -> dict[str, Any]:
    """The filters after the drill: every planned verdict recorded, none without its image, and
    at most a batch per kill measured twice."""
    from diffspec.catalog.store import Catalog
    from diffspec.catalog.verdicts import FILTERS_TABLE
    from diffspec.project import Project

    cat = Catalog(output)
    images = set(cat.live_images(["fingerprint"]).column("fingerprint").to_pylist())
    rows = cat.read_table(FILTERS_TABLE, ["fingerprint", "config_hash", "run_id"]).to_pylist()
    # runs per unit, not rows: a kill inside a merge of parts leaves a run's rows twice (readers
    # take the latest), which is not a unit measured again
    runs: dict[str, set[str]] = {}
    for r in rows:
        runs.setdefault(r["config_hash"], set()).add(r["run_id"])
    units = set(runs)
    (stage,) = [s for s in Project(spec).plan().stages if s.stage == "filters"]
    return {
        "filter_verdicts": len(rows),
        "filter_units": len(units),
        "filter_units_left": stage.total_create,
        "verdicts_without_image": sum(1 for r in rows if r["fingerprint"] not in images),
        "verdicts_measured_twice": sum(len(r) - 1 for r in runs.values()),
        "measured_twice_bound": kills * batch,
        "filter_parts": _stage_parts(output, FILTERS_TABLE),
    }


def audit_segments(output: Path) -> dict[str, Any]:
    """The segment table after the drill: each image's unit once, by one run; rows whole."""
    from diffspec.catalog.store import Catalog
    from diffspec.stages.masks import rle_decode, rle_from_string
    from diffspec.stages.segment_stage import live_segment_rows

    cat = Catalog(output)
    images = set(cat.live_images(["fingerprint"]).column("fingerprint").to_pylist())
    rows = live_segment_rows(cat).to_pylist()
    runs_per_unit: dict[str, set[str]] = {}
    keys = []
    undecodable = 0
    for r in rows:
        runs_per_unit.setdefault(r["segment_fingerprint"], set()).add(r["run_id"])
        keys.append((r["segment_fingerprint"], r["instance"]))
        if r["rle"] is not None:
            try:
                mask = rle_decode(rle_from_string(r["rle"], (r["height"], r["width"])))
                undecodable += int(int(mask.sum()) != r["area"])
            except Exception:  # noqa: BLE001 - any failure to decode is what the audit counts
                undecodable += 1
    return {
        "segment_units": len(runs_per_unit),
        "segment_rows": len(rows),
        "units_made_twice": sum(1 for runs in runs_per_unit.values() if len(runs) > 1),
        "duplicate_rows": len(keys) - len(set(keys)),
        "rows_without_image": sum(1 for r in rows if r["fingerprint"] not in images),
        "images_without_unit": len(images - {r["fingerprint"] for r in rows}),
        "undecodable_masks": undecodable,
        "segment_parts": _stage_parts(output),
    }


def audit(output: Path) -> dict[str, Any]:
    from diffspec.catalog.store import Catalog

    cat = Catalog(output)
    raw = cat.read_table("images", ["fingerprint", "path", "sha256", "bytes"]).to_pylist()
    fps = [r["fingerprint"] for r in raw]
    missing, mismatched = [], []
    for r in raw:
        file = output / r["path"]
        if not file.is_file():
            missing.append(r["path"])
            continue
        data = file.read_bytes()
        if hashlib.sha256(data).hexdigest() != r["sha256"] or len(data) != r["bytes"]:
            mismatched.append(r["path"])
    temps = [str(p.relative_to(output)) for p in output.rglob("*") if ".tmp-" in p.name]
    files = sum(1 for _ in (output / "images").rglob("*.png"))
    return {
        "rows": len(raw),
        "unique_fingerprints": len(set(fps)),
        "missing_files": missing,
        "sha_mismatch": mismatched,
        "temp_files": temps,
        "png_files": files,
        "runs": len({r["run_id"] for r in cat.runs()}),
        "finished_runs": sum(1 for r in cat.runs() if r["phase"] == "finished"),
        "parts": len(cat.parts("images")),
    }


def run_drill(
    workdir: Path,
    *,
    units: int = 240,
    kills: int = 12,
    batch: int = 8,
    size: int = 64,
    steps: int = 20,
    workers: int = 1,
    seed: int = 0,
    after_write: tuple[float, float] = (0.0, 2.0),
    model: Path | None = None,
    verbose: bool = True,
    stages: bool = False,
    filters: bool = False,
) -> dict[str, Any]:
    from diffspec.project import Project

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    if model is None:
        from diffspec.generate.tiny import build_tiny

        model = build_tiny("sd", "txt2img", workdir / "tiny")
    stage_models = None
    if stages:
        from diffspec.stages.tiny import build_tiny_grounding_dino, build_tiny_sam

        stage_models = (build_tiny_grounding_dino(workdir / "dino"), build_tiny_sam(workdir / "sam"))
    clip = None
    if filters:
        from diffspec.stages.tiny import build_tiny_clip

        clip = build_tiny_clip(workdir / "clip")
    spec = write_spec(workdir, model, units, batch, size, steps, workers, stage_models, clip)
    watched = "filters" if filters else "segment"  # the stage table whose new parts time a stage kill
    stages = stages or filters
    output = workdir / "out"
    planned = Project(spec).plan().total_create
    counter = workdir / "writes.txt"
    counter.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DIFFSPEC_WRITE_COUNTER": str(counter),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "DIFFUSERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }
    log = (workdir / "apply.log").open("ab")
    done_kills, moments, finished_early = 0, [], False
    first_write: list[float] = []
    t_start = time.perf_counter()
    while done_kills < kills:
        before = _lines(counter)
        parts_before = _stage_parts(output, watched)
        proc = _start(spec, env, log)
        t0 = time.perf_counter()
        startup_kill = bool(first_write) and done_kills % 4 == 2  # every 4th kill lands in start-up
        # With stages, every third kill waits for the stage's next recorded batch instead.
        stage_kill = stages and not startup_kill and done_kills % 3 == 1
        if startup_kill:  # anywhere in start-up: lock, clean-up, tidy, imports, model load
            deadline = t0 + rng.uniform(0.05, max(0.1, min(first_write)))
        else:
            deadline = None
        while proc.poll() is None:
            now = time.perf_counter()
            if deadline is None and not stage_kill and _lines(counter) > before:
                first_write.append(now - t0)
                deadline = now + rng.uniform(*after_write)
            elif deadline is None and not stage_kill and stages and _stage_parts(output, watched) > parts_before:
                deadline = now + rng.uniform(0.0, 0.3)  # the images are all made: kill in the stage
            if deadline is None and stage_kill and _stage_parts(output, watched) > parts_before:
                deadline = now + rng.uniform(0.0, 0.3)
            if deadline is not None and now >= deadline:
                break
            time.sleep(0.005)
        if proc.poll() is not None:
            finished_early = proc.returncode == 0
            if verbose:
                print(f"  run {done_kills + 1}: ended by itself (exit {proc.returncode}) before its kill", flush=True)
            if finished_early:
                break
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_kills += 1
        moment = time.perf_counter() - t0
        moments.append(round(moment, 2))
        if verbose:
            where = "start-up" if startup_kill else ("in the stage" if stage_kill else "while writing")
            print(
                f"  kill {done_kills:2d} at {moment:5.2f}s ({where}): {_lines(counter)} image writes so far",
                flush=True,
            )
    final = subprocess.run(
        [sys.executable, "-m", "diffspec.cli", "apply", str(spec), "-q", "--json"],
        cwd=spec.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    total_seconds = time.perf_counter() - t_start
    log.close()
    if final.returncode != 0:
        raise RuntimeError(f"the final apply failed ({final.returncode}):\n{final.stderr[-3000:]}")
    summary = json.loads(final.stdout)
    figures = audit(output)
    writes = _lines(counter)
    bound = planned + done_kills * batch
    figures.update(
        {
            "planned": planned,
            "kills": done_kills,
            "kill_moments_s": moments,
            "batch_size": batch,
            "workers": workers,
            "image_writes": writes,
            "write_bound": bound,
            "wasted_writes": writes - planned,
            "final_run_made": summary["made"],
            "left_to_make": Project(spec).plan().total_create,
            "seconds": round(total_seconds, 1),
            "finished_before_all_kills": finished_early,
        }
    )
    figures["ok"] = (
        figures["rows"] == planned
        and figures["unique_fingerprints"] == planned
        and not figures["missing_files"]
        and not figures["sha_mismatch"]
        and not figures["temp_files"]
        and writes <= bound
        and figures["left_to_make"] == 0
        and figures["png_files"] == planned
    )
    if filters:
        fil = audit_filters(output, spec, done_kills, batch)
        figures.update(fil)
        figures["ok"] = figures["ok"] and (
            fil["filter_units_left"] == 0
            and fil["filter_units"] == 3 * planned
            and fil["verdicts_without_image"] == 0
            and fil["verdicts_measured_twice"] <= fil["measured_twice_bound"]
        )
    elif stages:
        seg = audit_segments(output)
        figures.update(seg)
        figures["ok"] = figures["ok"] and (
            seg["segment_units"] == planned
            and seg["units_made_twice"] == 0
            and seg["duplicate_rows"] == 0
            and seg["rows_without_image"] == 0
            and seg["images_without_unit"] == 0
            and seg["undecodable_masks"] == 0
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=240)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--stages", action="store_true", help="also run the segment stage (tiny models)")
    parser.add_argument("--filters", action="store_true", help="also run the quality filters (tiny CLIP)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="diffspec-kill-drill-"))
    print(
        f"kill drill in {workdir}: {args.units} units, {args.kills} kills, batch {args.batch}, "
        f"{args.size}x{args.size}, {args.steps} steps, {args.workers} worker(s)",
        flush=True,
    )
    f = run_drill(
        workdir,
        units=args.units,
        kills=args.kills,
        batch=args.batch,
        size=args.size,
        steps=args.steps,
        workers=args.workers,
        seed=args.seed,
        stages=args.stages,
        filters=args.filters,
    )
    print(f"planned {f['planned']}  kills {f['kills']}  runs {f['runs']}  time {f['seconds']}s")
    print(
        f"rows {f['rows']}  unique fingerprints {f['unique_fingerprints']}  png files {f['png_files']}  "
        f"catalog parts {f['parts']}"
    )
    print(
        f"missing files {len(f['missing_files'])}  sha256 mismatches {len(f['sha_mismatch'])}  "
        f"temp files left {len(f['temp_files'])}  left to make {f['left_to_make']}"
    )
    print(
        f"image writes {f['image_writes']} <= bound planned + kills x batch = {f['write_bound']}  "
        f"(wasted {f['wasted_writes']}, {f['wasted_writes'] / max(1, f['kills']):.1f} per kill)"
    )
    if args.filters:
        print(
            f"filter units {f['filter_units']} (3 x {f['planned']})  left {f['filter_units_left']}  "
            f"verdicts {f['filter_verdicts']}  measured twice {f['verdicts_measured_twice']} "
            f"(bound {f['measured_twice_bound']})  without image {f['verdicts_without_image']}  "
            f"parts {f['filter_parts']}"
        )
    elif args.stages:
        print(
            f"segment units {f['segment_units']} (planned {f['planned']})  rows {f['segment_rows']}  "
            f"made twice {f['units_made_twice']}  duplicate rows {f['duplicate_rows']}  "
            f"rows without image {f['rows_without_image']}  images without unit {f['images_without_unit']}  "
            f"undecodable masks {f['undecodable_masks']}  parts {f['segment_parts']}"
        )
    print("OK" if f["ok"] else "FAILED")
    return 0 if f["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
