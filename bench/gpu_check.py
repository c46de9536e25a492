"""A GPU check to run on any CUDA machine, in a few minutes, with no download.

    python bench/gpu_check.py               # every check, one table at the end
    python bench/gpu_check.py --quick       # fewer images per check

Tiny Stable Diffusion pipelines are built from configs (``diffspec.generate.tiny.build_tiny``)
into a temp folder and loaded back through ``from_pretrained``, as users' models are. Checks:

* fp16 and bf16, each memory strategy (none, attention slicing, VAE tiling, model offload,
  sequential offload): `apply` makes every image, with the strategy and batch size the plan
  chose, and the peak CUDA memory each strategy used;
* a real out-of-memory: a batch that cannot fit (2048x2048 images at batch 16, planned for a GPU
  100x larger), handled by halving the batch at run time, recorded in the run log;
* two workers when the machine has two GPUs (`devices: auto`), with the same bytes as one;
* apply against a hand-written batched loop on the GPU at the same batch size.

On a machine without CUDA it says so and exits 2, without a traceback. It is the GPU half of
what the test suite checks on the CPU; nothing here runs in CI (CI has no GPU).
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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

STRATEGIES = ("none", "attention_slicing", "vae_tiling", "model_offload", "sequential_offload")


def cuda_or_exit() -> Any:
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed (pip install 'diffspec[gen]')", file=sys.stderr)
        raise SystemExit(2) from None
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run this on a machine "
            "with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return torch


def write_spec(
    folder: Path, model: Path, name: str, *, images: int, size: int, steps: int, dtype: str, budget: str
) -> Path:
    spec = folder / f"{name}.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: gpu-check
        output: out-{name}
        models:
          tiny: {{source: "{model}", scheduler: ddim, dtype: {dtype}}}
        defaults: {{model: tiny, size: [{size}, {size}], steps: {steps}, guidance: 7.5, seed: 3, negative: "blurry"}}
        budget: {{{budget}}}
        classes:
          things: {{target: {images}, prompt: "a photo of a {{thing}}", vars: {{thing: [cat, dog, car, tree]}}}}
        """),
        encoding="utf-8",
    )
    return spec


def run_apply(spec: Path, machine: Any = None) -> dict[str, Any]:
    import torch

    from diffspec.catalog.store import Catalog
    from diffspec.project import Project

    project = Project(spec)
    shutil.rmtree(project.output, ignore_errors=True)
    plan = project.plan()
    decision = next(iter(plan.execution.groups.values())).memory
    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)
    t0 = time.perf_counter()
    result = project.apply(plan, progress=False, stages=False, machine=machine)
    seconds = time.perf_counter() - t0
    peak = max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20
    runs = [r for r in Catalog(project.output).runs() if r["run_id"] == result.run_id and r["phase"] != "started"]
    log = json.loads(runs[0]["log"]) if runs else []
    hashes = {
        r["fingerprint"]: r["sha256"]
        for r in Catalog(project.output).live_images(["fingerprint", "sha256"]).to_pylist()
    }
    return {
        "made": result.made,
        "failed": result.failed,
        "seconds": seconds,
        "peak_mib": peak,
        "strategy": decision.strategy,
        "batch": decision.batch_size,
        "devices": ",".join(result.devices),
        "oom_retries": sum(e["event"] == "oom_retry" for e in log),
        "escalations": sum(e["event"] == "strategy_escalation" for e in log),
        "hashes": hashes,
    }


def hand_loop(model: Path, spec: Path, dtype: str, batch: int) -> float:
    """The script a user would write: one pipeline on the GPU, batched calls, no I/O."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from diffspec.plan.diff import build_plan
    from diffspec.spec.loader import load_spec

    units = list(build_plan(load_spec(spec)).units_to_create())
    torch_dtype = getattr(torch, dtype)
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model), torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to("cuda")
    key = units[0].key
    for i in range(0, len(units), batch):
        chunk = units[i : i + batch]
        pipe(
            [u.prompt for u in chunk],
            negative_prompt=[u.negative for u in chunk],
            num_inference_steps=key.steps,
            guidance_scale=key.guidance,
            height=key.height,
            width=key.width,
            generator=[torch.Generator().manual_seed(u.seed) for u in chunk],
        ).images
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images per check")
    args = parser.parse_args()
    torch = cuda_or_exit()
    from diffspec.generate.tiny import build_tiny

    images = 16 if args.quick else 64
    gpus = torch.cuda.device_count()
    vram = torch.cuda.get_device_properties(0).total_memory / 2**30
    work = Path(tempfile.mkdtemp(prefix="diffspec-gpu-check-"))
    os.chdir(work)
    model = build_tiny("sd", "txt2img", work / "tiny-sd")
    rows: list[tuple[str, str, str]] = []
    failures = 0

    def check(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        rows.append((name, "ok" if ok else "FAIL", detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    for dtype in ("float16", "bfloat16"):
        for strategy in STRATEGIES:
            spec = write_spec(
                work,
                model,
                f"{dtype}-{strategy}",
                images=images,
                size=64,
                steps=4,
                dtype=dtype,
                budget=f"devices: [0], vram_gb: {vram * 0.9:.1f}, max_batch: 8, strategy: {strategy}",
            )
            r = run_apply(spec)
            check(
                f"{dtype} {strategy}",
                r["made"] == images and r["failed"] == 0 and r["strategy"] == strategy,
                f"made {r['made']}/{images}, batch {r['batch']}, {r['seconds']:.1f}s, peak {r['peak_mib']:.0f} MiB",
            )

    # A batch that cannot fit: 2048x2048 images (the VAE decoder's full-size activations) at batch
    # 16, planned for a GPU 100x larger than this one. `apply` would refuse that plan on this
    # machine (the budget names more memory than the GPU has), so the machine it is checked
    # against is described as that larger GPU: the run itself is real, on this GPU.
    from diffspec.machine import Gpu, Machine, cpu_count, ram_gb

    claimed = Machine((Gpu(0, "claimed", vram * 100),), ram_gb(), cpu_count(), "gpu_check: claimed")
    spec = write_spec(
        work,
        model,
        "oom",
        images=16,
        size=2048,
        steps=2,
        dtype="float16",
        budget=f"devices: [0], vram_gb: {vram * 90:.0f}, max_batch: 16, strategy: none",
    )
    r = run_apply(spec, machine=claimed)
    check(
        "out-of-memory backoff",
        r["made"] == 16 and r["failed"] == 0 and r["oom_retries"] > 0,
        f"made {r['made']}/16 after {r['oom_retries']} halvings and {r['escalations']} strategy escalations, "
        f"{r['seconds']:.1f}s",
    )

    one = write_spec(
        work, model, "one-gpu", images=images, size=64, steps=4, dtype="float16", budget="devices: [0], max_batch: 8"
    )
    r1 = run_apply(one)
    if gpus >= 2:
        two = write_spec(
            work,
            model,
            "all-gpus",
            images=images,
            size=64,
            steps=4,
            dtype="float16",
            budget="devices: auto, max_batch: 8",
        )
        r2 = run_apply(two)
        same = r1["hashes"] == r2["hashes"]
        check(
            "two workers",
            r2["made"] == images and same and r2["devices"].count("cuda") >= 2,
            f"{r2['devices']}: {r2['seconds']:.1f}s against {r1['seconds']:.1f}s on one; same bytes: {same}",
        )
    else:
        rows.append(("two workers", "skipped", f"{gpus} GPU here"))

    loop = hand_loop(model, one, "float16", r1["batch"])
    ratio = r1["seconds"] / loop
    check(
        "apply vs a hand-written loop",
        ratio <= 1.25,
        f"apply {r1['seconds']:.2f}s, loop {loop:.2f}s, ratio {ratio:.3f} (batch {r1['batch']}, {images} images)",
    )

    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  result   detail\n{'-' * width}  -------  ------")
    for name, result, detail in rows:
        print(f"{name:<{width}}  {result:<7}  {detail}")
    print(f"\n{torch.cuda.get_device_name(0)} x{gpus}, torch {torch.__version__}; work folder {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
