"""The embedded ``builtin:digits`` model, from its SHIPPED weights (nothing retrains here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

import numpy as np  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    ImagePipelineOutput,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from diffspec.generate.builtin import builtin_path  # noqa: E402
from diffspec.generate.builtin.digit_classifier import classify  # noqa: E402
from diffspec.generate.builtin.digits import (  # noqa: E402
    DEFAULT_GUIDANCE,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    TOKENS,
    DigitsPipeline,
)

REPO = Path(__file__).resolve().parents[2]
ALL_SCHEDULERS = [
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
    LMSDiscreteScheduler,
    HeunDiscreteScheduler,
]
STYLES = ["", "thick", "thin", "slanted", "upright", "wide", "narrow", "backslanted", "thin slanted", "thick wide"]


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def pipe():
    p = DigitsPipeline.from_pretrained(builtin_path())
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config)  # the documented default sampler
    p.set_progress_bar_config(disable=True)
    return p


def _run(code: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


# --------------------------------------------------------------------------- shipping


def test_shipped_folder_is_small_safetensors_only_and_standard_diffusers():
    root = builtin_path()
    files = [p for p in root.rglob("*") if p.is_file()]
    names = {p.relative_to(root).as_posix() for p in files}
    assert {
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    } <= names
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl") for p in files)
    total = sum(p.stat().st_size for p in files)
    print(f"\nshipped weights: {total / 1e6:.2f} MB in {len(files)} files")
    assert total <= 5_000_000
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "DigitsPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    sched = json.loads((root / "scheduler/scheduler_config.json").read_text())
    assert sched["prediction_type"] == "epsilon"


def test_loads_offline_from_a_fresh_process():
    out = _run(
        "from diffspec.generate.builtin.digits import DigitsPipeline, builtin_path\n"
        "import torch\n"
        "p = DigitsPipeline.from_pretrained(builtin_path(), use_safetensors=True)\n"
        "p.set_progress_bar_config(disable=True)\n"
        "im = p('a 3', num_inference_steps=5, generator=torch.Generator().manual_seed(0)).images[0]\n"
        "print(type(p.unet).__name__, type(p.scheduler).__name__, im.mode, im.size)\n"
    )
    assert out.split() == ["UNet2DConditionModel", "DDPMScheduler", "RGB", f"({DEFAULT_SIZE},", f"{DEFAULT_SIZE})"]


def test_package_and_classifier_import_without_torch():
    out = _run(
        "import sys\n"
        "import diffspec.generate.builtin as b\n"
        "b.builtin_path()\n"
        "import diffspec.generate.builtin.digit_classifier as c\n"
        "from PIL import Image\n"
        "c.classify([Image.new('L', (8, 8))])\n"
        "print('torch' in sys.modules, 'diffusers' in sys.modules)\n"
    )
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- call contract


def test_call_mirrors_stable_diffusion_txt2img_arguments(pipe):
    out = pipe(
        prompt=["a 1", "a 2"],
        negative_prompt=["thick", ""],
        num_inference_steps=4,
        guidance_scale=2.0,
        generator=gens(range(4)),
        height=48,
        width=40,
        num_images_per_prompt=2,
        output_type="pil",
        return_dict=True,
    )
    assert isinstance(out, ImagePipelineOutput)
    assert len(out.images) == 4 and all(im.mode == "RGB" and im.size == (40, 48) for im in out.images)

    arr = pipe("7", num_inference_steps=3, output_type="np", generator=gens([0])).images
    assert arr.shape == (1, DEFAULT_SIZE, DEFAULT_SIZE, 3) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    assert np.array_equal(arr[..., 0], arr[..., 2])  # gray rendered as RGB

    pt = pipe("7", num_inference_steps=3, output_type="pt", return_dict=False, generator=gens([0]))[0]
    assert tuple(pt.shape) == (1, 3, DEFAULT_SIZE, DEFAULT_SIZE)

    native = pipe("7", num_inference_steps=3, height=8, width=8, output_type="np", generator=gens([0])).images
    assert native.shape == (1, 8, 8, 3)
    # nearest upscaling: each native pixel becomes a 4x4 block of the default 32x32 output
    assert np.allclose(np.kron(native[0, ..., 0], np.ones((4, 4))), arr[0, ..., 0], atol=1e-6)


def test_bad_arguments_raise_errors(pipe):
    with pytest.raises(ValueError, match="generators"):
        pipe(["a 1", "a 2"], generator=gens([0]) + gens([1]) + gens([2]), num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe("a 1", output_type="latent", num_inference_steps=2)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe("a 1", num_inference_steps=0)


@pytest.mark.parametrize("scheduler_cls", ALL_SCHEDULERS, ids=lambda c: c.__name__)
def test_every_diffusers_scheduler_swaps_in(pipe, scheduler_cls):
    p = DigitsPipeline(unet=pipe.unet, scheduler=scheduler_cls.from_config(pipe.scheduler.config))
    p.set_progress_bar_config(disable=True)
    ims = p(["a 0", "a 7"], num_inference_steps=10, generator=gens([1, 2])).images
    assert len(ims) == 2
    assert np.isfinite(np.asarray(ims[0], dtype=np.float32)).all()


@pytest.mark.parametrize(
    "scheduler_cls, steps",
    [(DDIMScheduler, 20), (EulerDiscreteScheduler, 20), (DPMSolverMultistepScheduler, 15)],
    ids=["ddim", "euler", "dpmsolver"],
)
def test_main_schedulers_make_the_prompted_digit(pipe, scheduler_cls, steps):
    p = DigitsPipeline(unet=pipe.unet, scheduler=scheduler_cls.from_config(pipe.scheduler.config))
    p.set_progress_bar_config(disable=True)
    prompts = [f"a handwritten {d}" for d in range(10) for _ in range(5)]
    ims = p(prompts, num_inference_steps=steps, generator=gens(range(500, 550))).images
    acc = np.mean([pred == int(pr[-1]) for (pred, _), pr in zip(classify(ims), prompts)])
    print(f"\n{scheduler_cls.__name__} {steps} steps: {acc:.0%} of 50 recognised")
    assert acc >= 0.8


# --------------------------------------------------------------------------- determinism


def test_same_seeds_give_identical_bytes(pipe):
    prompts = [f"a {STYLES[i]} {i}" for i in range(8)]
    a = pipe(prompts, generator=gens(range(8))).images
    b = pipe(prompts, generator=gens(range(8))).images
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]


@pytest.mark.parametrize(
    "scheduler_cls", [DDIMScheduler, EulerAncestralDiscreteScheduler, DDPMScheduler], ids=lambda c: c.__name__
)
def test_an_image_does_not_depend_on_its_batch(pipe, scheduler_cls):
    p = DigitsPipeline(unet=pipe.unet, scheduler=scheduler_cls.from_config(pipe.scheduler.config))
    p.set_progress_bar_config(disable=True)
    seeds = [11, 22, 33, 44, 55, 66, 77, 88]
    prompts = [f"a {STYLES[i]} handwritten {i}" for i in range(8)]
    batched = p(prompts, generator=gens(seeds), output_type="np").images
    single = np.concatenate([p(prompts[i], generator=gens([s]), output_type="np").images for i, s in enumerate(seeds)])
    batched8 = np.round(batched * 255)
    single8 = np.round(single * 255)
    diff = np.abs(batched8 - single8).max()
    print(
        f"\n{scheduler_cls.__name__}: batch 1 vs 8 max pixel difference {diff:.0f}/255 "
        f"(float max {np.abs(batched - single).max():.2e})"
    )
    assert diff <= 2
    # reversing the batch order changes nothing either
    rev = p(prompts[::-1], generator=gens(seeds[::-1]), output_type="np").images[::-1]
    assert np.abs(np.round(rev * 255) - batched8).max() <= 2


# --------------------------------------------------------------------------- the prompt decides


def test_quality_shipped_weights_default_settings(pipe):
    """>= 85% recognised overall and >= 70% per digit, 30 images per digit with style words."""
    per_digit = 30
    correct = []
    for d in range(10):
        prompts = [f"a {STYLES[i % len(STYLES)]} handwritten {d}".replace("  ", " ") for i in range(per_digit)]
        ims = pipe(prompts, generator=gens([1000 * d + i for i in range(per_digit)])).images
        correct.append(sum(p == d for p, _ in classify(ims)) / per_digit)
    overall = float(np.mean(correct))
    print(
        f"\nDDIM {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE}: overall {overall:.1%}; per digit "
        + " ".join(f"{d}:{c:.0%}" for d, c in enumerate(correct))
    )
    assert overall >= 0.85
    assert min(correct) >= 0.70


@pytest.mark.parametrize("prompt", ["a handwritten seven", "the number 7", "7", "digit seven"])
def test_any_usual_form_of_the_digit_picks_it(pipe, prompt):
    ims = pipe([prompt] * 10, generator=gens(range(300, 310))).images
    assert sum(p == 7 for p, _ in classify(ims)) >= 8


def test_unknown_words_are_ignored_by_the_model(pipe):
    a = pipe("a 5", generator=gens([3]), output_type="np").images
    b = pipe("a gorgeous 5 on a napkin, trending on artstation", generator=gens([3]), output_type="np").images
    assert np.array_equal(a, b)


def _measures(images):
    """The style measures the training labels came from, on images brought to 8x8, 0..16."""
    from diffspec.generate.builtin.digit_classifier import to_digit_features
    from diffspec.generate.builtin.train_digits import style_measures

    return style_measures(to_digit_features(images).reshape(-1, 8, 8))


@pytest.mark.parametrize(
    "low, high, measure",
    [("thin", "thick", "mass"), ("narrow", "wide", "spread"), ("backslanted", "slanted", "slant")],
)
def test_style_words_move_the_measure_they_were_labelled_from(pipe, low, high, measure):
    seeds = range(700, 740)
    prompts_lo = [f"a {low} {i % 10}" for i in range(40)]
    prompts_hi = [f"a {high} {i % 10}" for i in range(40)]
    lo = _measures(pipe(prompts_lo, generator=gens(seeds)).images)[measure]
    hi = _measures(pipe(prompts_hi, generator=gens(seeds)).images)[measure]
    print(
        f"\n{measure}: '{low}' mean {lo.mean():.3f}, '{high}' mean {hi.mean():.3f}; "
        f"{np.mean(hi > lo):.0%} of seed pairs ordered"
    )
    assert hi.mean() > lo.mean()
    assert np.mean(hi > lo) >= 0.7


def test_negative_prompt_is_the_unconditional_branch(pipe):
    seeds = range(800, 830)
    plain = _measures(pipe(["a 3"] * 30, generator=gens(seeds)).images)["mass"]
    neg = _measures(pipe(["a 3"] * 30, negative_prompt="thin", generator=gens(seeds)).images)["mass"]
    print(f"\nink mass: no negative {plain.mean():.1f}, negative 'thin' {neg.mean():.1f}")
    assert neg.mean() > plain.mean()
    # guidance <= 1 disables guidance, so the negative prompt does not matter
    a = pipe("a 3", negative_prompt="thin", guidance_scale=1.0, generator=gens([5]), output_type="np").images
    b = pipe("a 3", guidance_scale=1.0, generator=gens([5]), output_type="np").images
    assert np.array_equal(a, b)


def test_speed_is_reported(pipe):
    for bs in (1, 64):
        g = gens(range(bs))
        pipe(["a 7"] * bs, generator=g)
        n = 5 if bs == 1 else 2
        t = time.perf_counter()
        for _ in range(n):
            pipe(["a 7"] * bs, generator=g)
        dt = (time.perf_counter() - t) / n
        print(f"\nbatch {bs}: {bs / dt:.0f} images/s (DDIM {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE})")
    assert len(TOKENS) == 17
