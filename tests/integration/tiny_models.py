"""Shared helpers and fixtures for the generate integration tests (tiny random-weight models).

Import the fixtures into a test module with ``from tiny_models import *`` (see the try/except
import at the top of each ``test_generate_*.py``). Tiny models are built once per session.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no weights can be downloaded here

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from diffspec.plan.unit import ModelRef, PipelineKey, WorkUnit, fingerprint_of  # noqa: E402

__all__ = [
    "tiny_model",
    "input_images",
    "single_thread",
    "make_key",
    "make_units",
    "pixels",
    "max_diff",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``tiny_model(family, mode) -> folder``: built on first use, then cached for the session."""
    from diffspec.generate.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[tuple[str, str], Path] = {}

    def get(family: str, mode: str) -> Path:
        if (family, mode) not in built:
            built[(family, mode)] = build_tiny(family, mode, root / f"{family}-{mode}", seed=0)
        return built[(family, mode)]

    return get


@pytest.fixture(scope="session")
def input_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Input images: two RGB pictures with shapes (for canny), a mask and a depth map."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths: dict[str, Path] = {}
    for name, (box, color) in {
        "photo_a": ((10, 12, 50, 44), (220, 40, 40)),
        "photo_b": ((20, 6, 40, 58), (40, 200, 90)),
    }.items():
        base = rng.integers(60, 120, (64, 64, 3), dtype=np.uint8)
        image = Image.fromarray(base)
        draw = ImageDraw.Draw(image)
        draw.rectangle(box, fill=color)
        draw.ellipse((box[0] + 4, box[1] + 4, box[2] - 4, box[3] - 4), fill=(250, 250, 250))
        paths[name] = root / f"{name}.png"
        image.save(paths[name])
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    paths["mask"] = root / "mask.png"
    Image.fromarray(mask).save(paths["mask"])
    depth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    paths["depth"] = root / "depth.png"
    Image.fromarray(depth).save(paths["depth"])
    return paths


@pytest.fixture(scope="module", autouse=False)
def single_thread() -> Iterator[None]:
    """One torch thread: tiny models gain nothing from threads, and on a shared 2-core machine
    OpenMP's spinning threads make runs 10-100x slower when another process holds a core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_key(
    folder: Path | str,
    family: str,
    mode: str = "txt2img",
    *,
    size: int = 32,
    steps: int = 3,
    guidance: float = 5.0,
    scheduler: str = "default",
    scheduler_kwargs: dict | None = None,
    strength: float | None = 0.8,
    conditioning_scale: float = 1.0,
    control: str = "canny",
    model: ModelRef | None = None,
    **model_fields,
) -> PipelineKey:
    if model is None:
        controlnet = str(Path(folder) / "controlnet") if mode == "controlnet" else None
        model = ModelRef(
            name=f"tiny-{family}", source=str(folder), family=family, controlnet=controlnet, **model_fields
        )
    return PipelineKey(
        model=model,
        mode=mode,
        scheduler=scheduler,
        scheduler_kwargs=tuple(sorted((scheduler_kwargs or {}).items())),
        width=size,
        height=size,
        steps=steps,
        guidance=guidance,
        strength=strength if mode in ("img2img", "inpaint") else None,
        conditioning_scale=conditioning_scale if mode == "controlnet" else None,
        control=control if mode == "controlnet" else None,
    )


def make_units(
    key: PipelineKey,
    seeds: list[int],
    prompt: str | list[str] = "a photo of a red apple",
    negative: str | list[str] = "",
    inputs: dict[str, Path] | None = None,
    input_name: str = "photo_a",
) -> list[WorkUnit]:
    prompts = prompt if isinstance(prompt, list) else [prompt] * len(seeds)
    negatives = negative if isinstance(negative, list) else [negative] * len(seeds)
    units = []
    for index, (seed, p, n) in enumerate(zip(seeds, prompts, negatives)):
        image = str(inputs[input_name]) if inputs and key.mode != "txt2img" else None
        mask = str(inputs["mask"]) if inputs and key.mode == "inpaint" else None
        fingerprint = fingerprint_of(key, p, n, seed, image, mask)
        units.append(
            WorkUnit(
                fingerprint=fingerprint,
                key=key,
                class_name="tiny",
                index=index,
                seed=seed,
                prompt=p,
                negative=n,
                input_image=image,
                input_hash=image,
                mask_image=mask,
                mask_hash=mask,
            )
        )
    return units


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    """Largest per-pixel difference in 0..255 levels."""
    return int(np.abs(pixels(a) - pixels(b)).max())
