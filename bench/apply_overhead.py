"""What `diffspec apply` costs on top of the model: three ways to make the same images.

    python bench/apply_overhead.py                 # 240 images, 64x64, DDIM 20 steps, batch 8
    python bench/apply_overhead.py --images 200 --repeats 3

On a CPU, with a tiny random-weight SD pipeline (``build_tiny``) saved to a folder:

(a) ``diffspec apply`` through the library (``Project(spec).plan()`` + ``.apply()``): plan,
    lock, model load, batches, PNG with provenance, atomic durable writes, a catalog part per
    batch, run records, compaction;
(b) the seeds' way: one pipeline call per image, each PNG saved with ``image.save``;
(c) a hand-written batched loop at the same batch size, no I/O at all.

All three load the pipeline from the folder inside the timed region (torch and diffusers are
imported before). Targets: a <= 1.05 x c and a <= 0.80 x b. Each figure is the median of
``--repeats`` (5) interleaved rounds, in a rotating order, so no way always runs first or last.

The few-prompts case (``--case few``, also part of ``--case all``): 4 distinct prompts, 240
images, 4 steps, at guidance 0 and 7.5, apply (a) against the batched loop (c) at the same
batch size. The loop makes the pipeline encode every prompt and negative of every batch; apply
encodes each distinct text once (``diffspec.generate.text_cache``). It prints the share of (c)'s
time spent in text encoding (``encode_prompt`` timed inside the loop). Target: a <= 0.90 x c.
It prints the model's encoder-to-UNet-step ratio in FLOPs; ``--encoder-layers N`` rebuilds the
tiny text encoder with N layers, and ``--encoder-layers sdxl-turbo`` with the depth whose ratio
is nearest SDXL-Turbo's (0.070, counted on its published configs by ``bench/sdxl_flops.py``).

Also: (d) apply with two CPU worker processes (one torch thread each) against (a), one worker
with two threads, checking that both make identical rows (fingerprints and sha256); and the
largest per-pixel difference between batch size 1 and batch size 8.
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def write_spec(
    folder: Path,
    model: Path,
    images: int,
    batch: int,
    size: int,
    steps: int,
    output: str,
    workers: int = 1,
    guidance: float = 7.5,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f"{output}.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: overhead
        output: {output}
        models:
          tiny: {{source: "{model}", scheduler: ddim}}
        defaults: {{model: tiny, size: [{size}, {size}], steps: {steps}, guidance: {guidance}, seed: 5, negative: "blurry"}}
        budget: {{devices: cpu, max_batch: {batch}, workers: {workers}}}
        classes:
          things: {{target: {images}, prompt: "a photo of a {{thing}}", vars: {{thing: [cat, dog, car, tree]}}}}
        """),
        encoding="utf-8",
    )
    return spec


def load_pipe(model: Path) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


CPU: dict[str, list[float]] = {"a": [], "c": []}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def way_a(spec: Path) -> tuple[float, Any]:
    from diffspec.project import Project

    out = Project(spec).output
    shutil.rmtree(out, ignore_errors=True)
    t0, p0 = time.perf_counter(), time.process_time()
    project = Project(spec)
    result = project.apply(project.plan(), progress=False)
    seconds = time.perf_counter() - t0
    CPU["a"].append(time.process_time() - p0)
    assert result.failed == 0 and result.made > 0, result
    return seconds, result


def way_b(model: Path, units: list, steps: int, size: int, folder: Path) -> float:
    import torch

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    pipe = load_pipe(model)
    for u in units:
        image = pipe(
            u.prompt,
            negative_prompt=u.negative,
            num_inference_steps=steps,
            guidance_scale=7.5,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(u.seed),
        ).images[0]
        image.save(folder / f"{u.fingerprint}.png")
    return time.perf_counter() - t0


ENCODE_SECONDS: list[float] = []


def loop_call(pipe: Any, chunk: list, steps: int, size: int, guidance: float) -> Any:
    """One call of the hand-written batched loop: the batch's prompts, negatives and seeds."""
    import torch

    return pipe(
        [u.prompt for u in chunk],
        negative_prompt=[u.negative for u in chunk],
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        generator=[torch.Generator().manual_seed(u.seed) for u in chunk],
    ).images


def way_c(model: Path, units: list, steps: int, size: int, batch: int, guidance: float = 7.5) -> tuple[float, float]:

    t0, p0 = time.perf_counter(), time.process_time()
    pipe = load_pipe(model)
    # Time the pipeline's own text encoding inside the loop (what the few-prompts case saves).
    encode, spent = pipe.encode_prompt, [0.0]

    def timed_encode(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return encode(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    pipe.encode_prompt = timed_encode
    t1 = time.perf_counter()
    for i in range(0, len(units), batch):
        chunk = units[i : i + batch]
        loop_call(pipe, chunk, steps, size, guidance)
    end = time.perf_counter()
    CPU["c"].append(time.process_time() - p0)
    ENCODE_SECONDS.append(spent[0])
    return end - t0, end - t1


def hashes(output: Path) -> dict[str, str]:
    from diffspec.catalog.store import Catalog

    return {r["fingerprint"]: r["sha256"] for r in Catalog(output).live_images(["fingerprint", "sha256"]).to_pylist()}


def pixel_difference(out1: Path, out8: Path) -> tuple[int, int, int, int]:
    import numpy as np
    from PIL import Image

    from diffspec.catalog.store import Catalog

    p1 = {r["fingerprint"]: r["path"] for r in Catalog(out1).live_images(["fingerprint", "path"]).to_pylist()}
    p8 = {r["fingerprint"]: r["path"] for r in Catalog(out8).live_images(["fingerprint", "path"]).to_pylist()}
    worst = differing = total = images_differing = 0
    for fp, path in p1.items():
        x = np.asarray(Image.open(out1 / path), dtype=np.int16)
        y = np.asarray(Image.open(out8 / p8[fp]), dtype=np.int16)
        d = np.abs(x - y)
        worst = max(worst, int(d.max()))
        differing += int(np.count_nonzero(d))
        images_differing += int(d.any())
        total += d.size
    return worst, differing, total, images_differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--case", choices=("standard", "few", "all"), default="all", help="which cases to run (default: both)"
    )
    parser.add_argument("--no-b", action="store_true", help="skip (b), one call per image (the slowest way)")
    parser.add_argument(
        "--encoder-layers",
        default="0",
        help="few-prompts case: rebuild the tiny text encoder with this many layers (0: the tiny model's 2; "
        f"'sdxl-turbo': as many as set its encoder-to-UNet-step FLOPs ratio nearest SDXL-Turbo's {SDXL_TURBO_RATIO})",
    )
    parser.add_argument("--no-workers", action="store_true", help="skip (d), two worker processes")
    parser.add_argument("--no-determinism", action="store_true", help="skip the batch 1 vs 8 comparison")
    parser.add_argument("--profile", action="store_true", help="cProfile one run of (a) and print the top")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for (a), (b), (c) (default: torch's, all cores); (d) always splits the cores",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    import diffusers  # noqa: F401  (imports are not part of any timing)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from diffspec.generate.tiny import build_tiny

    work = args.workdir or Path(tempfile.mkdtemp(prefix="diffspec-overhead-"))
    model = build_tiny("sd", "txt2img", work / "tiny")
    ok = True
    if args.case in ("standard", "all"):
        ok &= standard_case(args, work, model)
    if args.case in ("few", "all"):
        ok &= few_prompts_case(args, work, model)
    return 0 if ok else 1


def rotate(ways: list[Any], rounds: int, report: Any) -> None:
    """Run every way once per round, the order rotated each round."""
    for r in range(rounds):
        k = r % len(ways)
        for way in ways[k:] + ways[:k]:
            way()
        report(r)


def units_of(spec: Path, expected: int) -> list[Any]:
    from diffspec.project import Project

    shutil.rmtree(Project(spec).output, ignore_errors=True)
    units = sorted(Project(spec).plan().units_to_create(), key=lambda u: u.index)
    assert len(units) == expected, len(units)
    return units


def standard_case(args: argparse.Namespace, work: Path, model: Path) -> bool:
    import torch

    from diffspec.project import Project

    spec = write_spec(work, model, args.images, args.batch, args.size, args.steps, "out-a")
    units = units_of(spec, args.images)
    print(
        f"{len(units)} images {args.size}x{args.size}, DDIM {args.steps} steps, CFG, batch {args.batch}, "
        f"CPU {torch.get_num_threads()} threads, {args.repeats} rounds; work dir {work}",
        flush=True,
    )
    way_c(model, units[: args.batch], args.steps, args.size, args.batch)  # warm caches once
    CPU["c"].clear()
    CPU["a"].clear()

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        way_a(spec)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        CPU["a"].clear()

    a_times: list[float] = []
    b_times: list[float] = []
    c_times: list[float] = []
    c_gen: list[float] = []

    def run_a() -> None:
        a_times.append(way_a(spec)[0])

    def run_b() -> None:
        b_times.append(way_b(model, units, args.steps, args.size, work / "out-b"))

    def run_c() -> None:
        c, g = way_c(model, units, args.steps, args.size, args.batch)
        c_times.append(c)
        c_gen.append(g)

    def report(r: int) -> None:
        b = f"b {b_times[-1]:.2f}s  " if b_times else ""
        print(
            f"  round {r + 1}: a {a_times[-1]:.2f}s  {b}c {c_times[-1]:.2f}s (c without load {c_gen[-1]:.2f}s)",
            flush=True,
        )

    rotate([run_a, run_c] if args.no_b else [run_a, run_b, run_c], args.repeats, report)
    a, c = median(a_times), median(c_times)
    print(f"(a) diffspec apply          {a:7.2f}s  {len(units) / a:6.1f} images/s")
    ok_b = True
    if b_times:
        b = median(b_times)
        print(f"(b) one call per image+save {b:7.2f}s  {len(units) / b:6.1f} images/s")
    print(
        f"(c) batched loop, no I/O    {c:7.2f}s  {len(units) / c:6.1f} images/s  (pipeline load excluded: {median(c_gen):.2f}s)"
    )
    ok_c = a <= 1.05 * c
    cpu_a, cpu_c = median(CPU["a"]), median(CPU["c"])
    print(
        f"CPU seconds of this process: (a) {cpu_a:.2f}  (c) {cpu_c:.2f}  ratio {cpu_a / cpu_c:.3f} "
        "(less sensitive than wall time to other jobs on a shared machine)"
    )
    print(f"a / c = {a / c:.3f}  (target <= 1.05, medians of {args.repeats}: {'met' if ok_c else 'MISSED'})")
    if b_times:
        ok_b = a <= 0.80 * b
        print(f"a / b = {a / b:.3f}  (target <= 0.80: {'met' if ok_b else 'MISSED'})")
    base = hashes(Project(spec).output)

    if not args.no_workers:
        spec2 = write_spec(work, model, args.images, args.batch, args.size, args.steps, "out-d", workers=2)
        d_times = []
        for r in range(args.repeats):
            d, _ = way_a(spec2)
            d_times.append(d)
            print(f"  round {r + 1}: d (2 workers x 1 thread) {d:.2f}s", flush=True)
        d = median(d_times)
        same = hashes(Project(spec2).output) == base
        if args.threads:
            torch.set_num_threads(2)
            a2 = median([way_a(spec)[0] for _ in range(args.repeats)])
            print(f"  (a) again with 2 threads: {a2:.2f}s", flush=True)
        else:
            a2 = a
        print(
            f"(d) 2 worker processes      {d:7.2f}s  {len(units) / d:6.1f} images/s  vs (a) 1 worker x 2 threads {a2:.2f}s: "
            f"d / a = {d / a2:.3f} ({'not slower' if d <= a2 else 'SLOWER'}); identical rows: {same}"
        )

    if not args.no_determinism:
        spec1 = write_spec(work, model, args.images, 1, args.size, args.steps, "out-batch1")
        way_a(spec1)
        worst, differing, total, images = pixel_difference(Project(spec1).output, Project(spec).output)
        print(
            f"batch 1 vs batch {args.batch}: largest per-pixel difference {worst}/255; {differing} of {total} "
            f"channel values differ ({100 * differing / total:.4f}%), in {images} of {len(units)} images"
        )
    return ok_c and ok_b


#: SDXL-Turbo's text encoders (CLIP-L + OpenCLIP-G, one 77-token prompt) against one step of
#: its UNet at 512x512, in FLOPs counted on the published configs by bench/sdxl_flops.py:
#: 111 / 1,589 GFLOPs.
SDXL_TURBO_RATIO = 0.070


def deeper_text_encoder(model: Path, layers: int) -> None:
    """Replace the tiny text encoder by one with ``layers`` layers (same width, so the UNet's
    cross-attention still fits): raises the encoder's cost against the denoiser's."""
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = model / "text_encoder"
    config = CLIPTextConfig.from_pretrained(folder)
    config.num_hidden_layers = layers
    CLIPTextModel(config).save_pretrained(folder, safe_serialization=True)


def encoder_to_step_flops(model: Path, size: int) -> float:
    """FLOPs of the model's text encoder on one prompt over one UNet step on one image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pipe = load_pipe(model)
    ids = torch.zeros(1, pipe.tokenizer.model_max_length, dtype=torch.long)
    latent = torch.zeros(1, pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)

    def flops(fn: Any) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn()
        return int(counter.get_total_flops())

    with torch.no_grad():
        states = pipe.text_encoder(ids)[0]
    text = flops(lambda: pipe.text_encoder(ids))
    step = flops(lambda: pipe.unet(latent, 10, encoder_hidden_states=states))
    return text / step


def layers_for_ratio(work: Path, size: int, target: float) -> tuple[int, float]:
    """The text encoder depth whose encoder-to-step FLOPs ratio is nearest ``target``."""
    best: tuple[float, int, float] | None = None
    for layers in range(1, 9):
        trial = work / f"tiny-encoder-{layers}"
        if not trial.exists():
            shutil.copytree(work / "tiny", trial)
            deeper_text_encoder(trial, layers)
        ratio = encoder_to_step_flops(trial, size)
        if best is None or abs(ratio - target) < best[0]:
            best = (abs(ratio - target), layers, ratio)
        if ratio > target:
            break
    assert best is not None
    return best[1], best[2]


def backend_against_loop(model: Path, units: list, steps: int, size: int, batch: int, guidance: float) -> float:
    """Median over batches of diffspec's generation call (Backend.generate inside the CPU conv
    routing, as the runner calls it: each distinct text encoded once) over the same batch
    through the plain pipeline, the two timed in turn on every batch (3 passes) so the
    machine's drift cancels: the saving of the generation itself, without apply's I/O."""

    from diffspec.generate.backend import Backend
    from diffspec.run.numerics import thread_invariant_convolutions

    backend = Backend(units[0].key, device="cpu", strategy="none")
    pipe = load_pipe(model)
    ratios: list[float] = []
    for _ in range(3):
        for i in range(0, len(units), batch):
            chunk = units[i : i + batch]
            start = time.perf_counter()
            with thread_invariant_convolutions("cpu"):
                backend.generate(chunk)
            ours = time.perf_counter() - start
            start = time.perf_counter()
            loop_call(pipe, chunk, steps, size, guidance)
            ratios.append(ours / (time.perf_counter() - start))
    backend.close()
    return median(ratios)


def few_prompts_guidance(
    spec: Path, model: Path, images: int, steps: int, size: int, batch: int, guidance: float, rounds: int
) -> tuple[float, float, float, float]:
    """Medians of (a) and (c) at one guidance, of the loop's seconds in text encoding, and the
    generation-only ratio (:func:`backend_against_loop`)."""
    units = units_of(spec, images)
    a_times: list[float] = []
    c_times: list[float] = []
    way_c(model, units[:batch], steps, size, batch, guidance)  # warm up
    ENCODE_SECONDS.clear()

    def run_a() -> None:
        a_times.append(way_a(spec)[0])

    def run_c() -> None:
        c_times.append(way_c(model, units, steps, size, batch, guidance)[0])

    def report(r: int) -> None:
        print(f"  guidance {guidance:g} round {r + 1}: a {a_times[-1]:.2f}s  c {c_times[-1]:.2f}s", flush=True)

    rotate([run_a, run_c], rounds, report)
    generation = backend_against_loop(model, units, steps, size, batch, guidance)
    return median(a_times), median(c_times), median(ENCODE_SECONDS), generation


def few_prompts_case(args: argparse.Namespace, work: Path, model: Path) -> bool:
    images, steps, batch = 240, 4, args.batch
    layers = 0
    if args.encoder_layers == "sdxl-turbo":
        layers, _ = layers_for_ratio(work, args.size, SDXL_TURBO_RATIO)
    elif int(args.encoder_layers):
        layers = int(args.encoder_layers)
    if layers:
        model = work / f"tiny-encoder-{layers}"
        if not model.exists():
            shutil.copytree(work / "tiny", model)
            deeper_text_encoder(model, layers)
    ratio = encoder_to_step_flops(model, args.size)
    print(
        f"few prompts: 4 prompts, {images} images {args.size}x{args.size}, {steps} steps, batch {batch}, "
        f"{args.repeats} rounds; text encoder layers: {layers or 2}; encoder / UNet step = {ratio:.3f} in FLOPs "
        f"(SDXL-Turbo: {SDXL_TURBO_RATIO}, bench/sdxl_flops.py)",
        flush=True,
    )
    ok = True
    for guidance in (0.0, 7.5):
        spec = write_spec(work, model, images, batch, args.size, steps, f"few-g{guidance:g}", guidance=guidance)
        a, c, encoding, generation = few_prompts_guidance(
            spec, model, images, steps, args.size, batch, guidance, args.repeats
        )
        met = a <= 0.90 * c
        ok &= met
        print(
            f"few prompts, guidance {guidance:g}: apply {a:.2f}s, batched loop {c:.2f}s, a / c = {a / c:.3f} "
            f"(target <= 0.90: {'met' if met else 'MISSED'}); the loop spent {100 * encoding / c:.1f}% of its time "
            f"encoding text ({encoding:.2f}s); generation alone, batch by batch: diffspec / loop = {generation:.3f}"
        )
    return ok


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
