"""diffusers' step caches on tiny FLUX, on against off, through the Backend a run uses.

    python bench/step_cache.py [--rounds 5] [--steps 20] [--images 4] [--threads 1]

Two random-weight FLUX pipelines built from configs (no download), loaded through
`from_pretrained` like a user's model:

* ``tiny``: diffspec's test model (`build_tiny("flux", ...)`: 1 double + 1 single block,
  32x32);
* ``deep``: the same text encoders and VAE with a 2 double + 8 single block transformer at
  64x64, closer to the shape of FLUX.1 (19 + 38 blocks), where the transformer is nearly all
  of a step.

For each model: one Backend per cache (off, first_block, taylorseer, magcache,
pyramid_attention_broadcast; their spec defaults), each timed on one call of ``--images`` images
per round, the caches interleaved and their order rotated each round. Prints per cache the median
seconds per call, the ratio on / off (median of --rounds rounds), the share of the last
transformer block's attention computations against off (how much of the denoiser the cache
skipped), the largest per-pixel difference against off (0..255) and the PSNR over all images.
Random weights make noise-like images: the pixel figures say how far a cache moves the output,
not whether it still looks good.
First Block Cache runs one image per call (its skip decision is batch-wide, see
docs/spec.md#speed), so its row also pays for the lost batching, and a 1-level difference with
no skipped block is that batch-size rounding (docs/determinism.md).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CACHES: dict[str, dict[str, Any]] = {
    "off": {},
    "first_block": {"first_block": {}},
    # the default threshold (0.05) skips almost nothing on random weights, whose first-block
    # residual changes a lot from step to step; a loose one shows what skipping buys
    "first_block threshold 0.3": {"first_block": {"threshold": 0.3}},
    "taylorseer": {"taylorseer": {}},
    "magcache": {"magcache": {}},
    "pyramid_attention_broadcast": {"pyramid_attention_broadcast": {}},
}


def build_models(root: Path) -> dict[str, tuple[Path, int]]:
    """(folder, image size) per model."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from diffspec.generate.tiny import build_tiny

    tiny = build_tiny("flux", "txt2img", root / "tiny", seed=0)
    pipe = FluxPipeline.from_pretrained(tiny)
    config = dict(pipe.transformer.config)
    config.update(
        num_layers=2, num_single_layers=8, num_attention_heads=4, attention_head_dim=32, axes_dims_rope=[8, 8, 16]
    )
    torch.manual_seed(1)
    pipe.transformer = FluxTransformer2DModel.from_config(config)
    deep = root / "deep"
    pipe.save_pretrained(deep, safe_serialization=True)
    return {"tiny": (tiny, 32), "deep": (deep, 64)}


def backend_for(folder: Path, size: int, steps: int, cache: dict[str, Any], images: int) -> tuple[Any, list[Any]]:
    from diffspec.generate.backend import Backend
    from diffspec.plan.compile import speed_options
    from diffspec.plan.unit import ModelRef, PipelineKey, WorkUnit, fingerprint_of
    from diffspec.spec.model import SpeedSpec

    speed = speed_options(SpeedSpec.model_validate({"cache": cache} if cache else {}))
    model = ModelRef(name="flux", source=str(folder), family="flux", speed=speed)
    key = PipelineKey(
        model=model,
        mode="txt2img",
        scheduler="default",
        scheduler_kwargs=(),
        width=size,
        height=size,
        steps=steps,
        guidance=3.5,
    )
    prompts = [f"a photo of a {thing}" for thing in ("red apple", "blue car", "green tree", "white cat")]
    units = []
    for i in range(images):
        prompt = prompts[i % len(prompts)]
        fp = fingerprint_of(key, prompt, "", 1000 + i)
        units.append(WorkUnit(fp, key, "bench", i, 1000 + i, prompt, ""))
    return Backend(key), units


def psnr(max_error_sq: float) -> float:
    return math.inf if max_error_sq == 0 else 10 * math.log10(255.0**2 / max_error_sq)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch

    from diffspec.run.numerics import thread_invariant_convolutions

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="diffspec-step-cache-") as tmp:
        models = build_models(Path(tmp))
        print(
            f"tiny FLUX, {args.steps} steps, {args.images} images per call, {args.rounds} interleaved rounds, "
            f"{args.threads} torch thread(s), torch {torch.__version__}"
        )
        for model_name, (folder, size) in models.items():
            backends = {
                name: backend_for(folder, size, args.steps, cache, args.images) for name, cache in CACHES.items()
            }
            times: dict[str, list[float]] = {name: [] for name in CACHES}
            images: dict[str, list[Any]] = {}
            order = list(CACHES)
            runs: dict[str, int] = {}
            with thread_invariant_convolutions("cpu"):
                for name in order:  # warm-up: first-call costs (allocations, lazy imports) out of the timings
                    backend, units = backends[name]
                    # a projection inside the last block's attention: every cache's skip path
                    # (block skipped, output predicted, attention reused) bypasses it
                    last = backend.pipe.transformer.single_transformer_blocks[-1].attn.to_q
                    counter = {"n": 0}
                    hook = last.register_forward_pre_hook(lambda *_, c=counter: c.update(n=c["n"] + 1))
                    images[name] = [np.asarray(g.image, dtype=np.float64) for g in backend.generate(units)]
                    hook.remove()
                    # per image: a batch-coupled cache runs one call per image
                    runs[name] = counter["n"] * (1 if backend.speed.batch_coupled else len(units))
                for r in range(args.rounds):
                    for name in order[r % len(order) :] + order[: r % len(order)]:
                        backend, units = backends[name]
                        t0 = time.perf_counter()
                        backend.generate(units)
                        times[name].append(time.perf_counter() - t0)
            for backend, _ in backends.values():
                backend.close()
            off = statistics.median(times["off"])
            base = images["off"]
            print(f"\n{model_name} ({size}x{size}):")
            print(f"  {'cache':<28} {'s/call':>8} {'on/off':>7} {'blocks':>7} {'max diff':>9} {'PSNR dB':>8}")
            for name in CACHES:
                median = statistics.median(times[name])
                diff = max(float(np.abs(a - b).max()) for a, b in zip(images[name], base))
                mse = float(np.mean([np.mean((a - b) ** 2) for a, b in zip(images[name], base)]))
                share = runs[name] / runs["off"]
                print(f"  {name:<28} {median:8.3f} {median / off:7.3f} {share:7.2f} {diff:9.0f} {psnr(mse):8.1f}")


if __name__ == "__main__":
    main()
