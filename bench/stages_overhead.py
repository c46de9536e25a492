"""What the segment stage costs on top of its models: `apply` running the stage against a bare
loop calling the same two models at the same batch size, in one run.

    python bench/stages_overhead.py                     # 120 images, batch 4, 5 rounds
    python bench/stages_overhead.py --images 24 --rounds 1   # a functional smoke run

Set-up (not timed): tiny random-weight Grounding DINO and SAM built from configs
(``diffspec.stages.tiny``) and saved like checkpoints; ``--images`` images made once by the
embedded digits model at ``--size`` px. Then, per round, in rotating order:

(s) ``Project(spec).apply()`` with the images already made, so it runs only the segment stage:
    plan (compile, catalog diff, stage fingerprints), lock, model load, images read from the
    catalog's paths, batches, the mask rules, RLE and polygons, one atomic Parquet part per
    batch, the run records and the merge of the run's parts. The stage's table is removed
    before each round.
(b) the loop a user would write: load the same two models, open the same image files, call
    the same ``TextSegmenter.run`` (detector, SAM, the same mask rules) ``--batch`` images at a
    time, and write each image's YOLO polygon label file.

Prints the medians of ``--rounds`` rounds of each and s/b (target <= 1.15), and checks that the
stage recorded as many kept masks as the loop wrote label lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def write_spec(folder: Path, images: int, size: int, batch: int, dino: Path, sam: Path) -> Path:
    half = images // 2
    spec = folder / "spec.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: stages-bench
        output: out
        models:
          digits: {{source: "builtin:digits", scheduler: ddim}}
        defaults: {{model: digits, size: [{size}, {size}], steps: 2, guidance: 3.0, seed: 1}}
        budget: {{devices: cpu, max_batch: 8}}
        classes:
          zero: {{target: {images - half}, prompt: "a thin handwritten zero"}}
          one: {{target: {half}, prompt: "a thick handwritten one"}}
        stages:
          segment: {{detector: "{dino}", segmenter: "{sam}", box_threshold: 0.3, min_area: 0.01, batch_size: {batch}}}
        """)
    )
    return spec


def run_stage(spec: Path) -> tuple[float, int]:
    from diffspec.project import Project

    shutil.rmtree(spec.parent / "out" / "catalog" / "stages" / "segment", ignore_errors=True)
    t0 = time.perf_counter()
    result = Project(spec).apply(progress=False)
    seconds = time.perf_counter() - t0
    assert result.made == 0 and result.stages["run"]["segment"]["made"] > 0, result.stages
    kept = Project(spec).query("SELECT count(*) AS n FROM segment WHERE kept").column("n")[0].as_py()
    return seconds, int(kept)


def run_loop(
    spec: Path, paths: list[tuple[Path, str]], dino: Path, sam: Path, batch: int, dest: Path
) -> tuple[float, int]:
    from PIL import Image

    from diffspec.plan.stage_identity import DetectParams, HFModelRef, MaskFilter
    from diffspec.stages.masks import mask_to_polygons, yolo_segment_line
    from diffspec.stages.segment import TextSegmenter

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    t0 = time.perf_counter()
    seg = TextSegmenter.load(HFModelRef(str(dino)), HFModelRef(str(sam)))
    params, rules = DetectParams(box_threshold=0.3), MaskFilter(min_area=0.01)
    lines_written = 0
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        images = [Image.open(p).convert("RGB") for p, _ in chunk]
        results = seg.run(images, [text for _, text in chunk], params, rules, batch_size=batch)
        for (path, _), result in zip(chunk, results):
            lines = []
            for i in result.kept:
                outlines = [p for p in mask_to_polygons(result.masks[i]) if len(p) >= 3]
                if outlines:
                    lines.append(yolo_segment_line(0, outlines[0]))
            (dest / f"{path.stem}.txt").write_text("".join(line + "\n" for line in lines))
            lines_written += len(lines)
    return time.perf_counter() - t0, lines_written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from diffspec.project import Project
    from diffspec.stages.tiny import build_tiny_grounding_dino, build_tiny_sam

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="diffspec-stages-bench-"))
    dino, sam = build_tiny_grounding_dino(work / "dino"), build_tiny_sam(work / "sam")
    spec = write_spec(work, args.images, args.size, args.batch, dino, sam)
    made = Project(spec).apply(progress=False, stages=False)
    assert made.made == args.images, made.log
    rows = Project(spec).query("SELECT path, class_name FROM images ORDER BY class_name, unit_index").to_pylist()
    paths = [(spec.parent / "out" / r["path"], r["class_name"]) for r in rows]
    print(
        f"stages bench in {work}: {args.images} images {args.size}x{args.size}, batch {args.batch}, "
        f"{args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    times: dict[str, list[float]] = {"s": [], "b": []}
    counts: dict[str, int] = {}
    for r in range(args.rounds):
        order = ["s", "b"] if r % 2 == 0 else ["b", "s"]
        for way in order:
            if way == "s":
                seconds, counts["s"] = run_stage(spec)
            else:
                seconds, counts["b"] = run_loop(spec, paths, dino, sam, args.batch, work / "loop-labels")
            times[way].append(seconds)
        print(f"  round {r + 1}: stage {times['s'][-1]:.2f}s  loop {times['b'][-1]:.2f}s", flush=True)
    s, b = statistics.median(times["s"]), statistics.median(times["b"])
    print(f"(s) apply, segment stage only : {s:.2f}s  ({args.images / s:.1f} images/s)")
    print(f"(b) bare loop, same models    : {b:.2f}s  ({args.images / b:.1f} images/s)")
    print(f"s/b = {s / b:.3f}  (target <= 1.15; medians of {args.rounds} rounds)")
    same = counts["s"] == counts["b"]
    print(f"kept masks: stage {counts['s']}, loop label lines {counts['b']}: {'same' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
