"""Control images, LoRA, textual inversion, prompt weighting and batch independence on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

try:
    from tiny_models import *  # noqa: F403
except ImportError:  # pragma: no cover
    from tests.integration.tiny_models import *  # noqa: F403

from diffspec.errors import GenerationError
from diffspec.plan.unit import EmbeddingRef, LoraRef, ModelRef

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sd_backend(tiny_model):
    from diffspec.generate.backend import Backend

    backend = Backend(make_key(tiny_model("sd", "txt2img"), "sd", size=64, steps=4))
    yield backend
    backend.close()


# ---------------------------------------------------------------------------------------- control


def test_canny_control_image_is_computed_at_the_unit_size(input_images):
    from diffspec.generate.control import control_image

    edges = control_image(input_images["photo_a"], "canny", 48, 40)
    arr = np.asarray(edges)
    assert edges.mode == "RGB" and edges.size == (48, 40)
    assert set(np.unique(arr)) <= {0, 255}
    assert (arr == 255).any(), "the drawn rectangle must give edges"
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    # thresholds travel in the control string; low thresholds also keep the noisy background
    loose = np.asarray(control_image(input_images["photo_a"], "canny:5:20", 48, 40))
    assert (loose == 255).sum() > (arr == 255).sum()


def test_depth_and_image_controls(input_images):
    from diffspec.generate.control import control_image, load_mask

    depth = np.asarray(control_image(input_images["depth"], "depth", 64, 64))
    assert depth.shape == (64, 64, 3) and (depth[..., 0] == depth[..., 2]).all()
    assert depth[0, 0, 0] < depth[0, -1, 0]
    as_is = control_image(input_images["photo_a"], "image", 32, 32)
    assert as_is.mode == "RGB" and as_is.size == (32, 32)
    mask = load_mask(input_images["mask"], 32, 32)
    assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_bad_control_and_missing_input_are_generation_errors(tmp_path, input_images):
    from diffspec.generate.control import control_image, load_rgb

    with pytest.raises(GenerationError, match="unknown control kind"):
        control_image(input_images["photo_a"], "scribble", 32, 32)
    with pytest.raises(GenerationError, match="does not exist"):
        load_rgb(tmp_path / "nope.png", 32, 32)


# ---------------------------------------------------------------------------------------- LoRA / TI


@pytest.fixture(scope="module")
def tiny_lora(tiny_model, tmp_path_factory):
    """A random LoRA for the tiny SD UNet, made with peft and saved as diffusers saves LoRAs."""
    pytest.importorskip("peft")
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model("sd", "txt2img"))
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def _one_image(model: ModelRef, prompt: str = "a photo of <tiny-cat>", seed: int = 7) -> Image.Image:
    from diffspec.generate.backend import Backend

    key = make_key(model.source, model.family, size=64, steps=4, model=model)
    with Backend(key) as backend:
        return backend.generate(make_units(key, [seed], prompt=prompt))[0].image


def test_lora_changes_the_output_by_its_scale(tiny_model, tiny_lora):
    folder = str(tiny_model("sd", "txt2img"))
    base = _one_image(ModelRef("tiny", folder, "sd"))
    full = _one_image(ModelRef("tiny", folder, "sd", loras=(LoraRef(str(tiny_lora.parent), tiny_lora.name, 1.0),)))
    half = _one_image(ModelRef("tiny", folder, "sd", loras=(LoraRef(str(tiny_lora), None, 0.5),)))
    assert max_diff(base, full) > 0
    assert max_diff(base, half) > 0 and max_diff(full, half) > 0
    again = _one_image(ModelRef("tiny", folder, "sd", loras=(LoraRef(str(tiny_lora), None, 0.5),)))
    assert again.tobytes() == half.tobytes()


def test_textual_inversion_changes_the_output(tiny_model, tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    save_file({"emb_params": torch.randn(2, 32)}, tmp_path / "tiny-cat.safetensors")  # A1111 format, 2 vectors
    folder = str(tiny_model("sd", "txt2img"))
    base = _one_image(ModelRef("tiny", folder, "sd"))
    embedded = ModelRef(
        "tiny", folder, "sd", embeddings=(EmbeddingRef(str(tmp_path / "tiny-cat.safetensors"), "<tiny-cat>"),)
    )
    with_ti = _one_image(embedded)
    assert max_diff(base, with_ti) > 0
    assert _one_image(embedded).tobytes() == with_ti.tobytes()


def test_missing_lora_is_a_generation_error(tiny_model, tmp_path):
    from diffspec.generate.backend import Backend

    model = ModelRef(
        "tiny", str(tiny_model("sd", "txt2img")), "sd", loras=(LoraRef(str(tmp_path / "none.safetensors")),)
    )
    with pytest.raises(GenerationError, match="cannot load LoRA"):
        Backend(make_key(model.source, "sd", model=model))


# ---------------------------------------------------------------------------------------- weighting


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_prompt_weighting_changes_the_output_and_is_deterministic(family, tiny_model):
    from diffspec.generate.backend import Backend

    key = make_key(tiny_model(family, "txt2img"), family, size=64, steps=4)
    plain_prompt, weighted_prompt = "a red apple on a table", "a (red apple:1.6) on a [table]"
    with Backend(key) as backend:
        plain = backend.generate(make_units(key, [9], prompt=plain_prompt))[0].image
        weighted = backend.generate(make_units(key, [9], prompt=weighted_prompt))[0].image
        again = backend.generate(make_units(key, [9], prompt=weighted_prompt))[0].image
        # a weighted negative works too, and weights of 1 are the plain prompt
        negative = backend.generate(make_units(key, [9], prompt=plain_prompt, negative="(blurry:1.4)"))[0].image
        unit_weight = backend.generate(make_units(key, [9], prompt="a (red apple:1) on a table"))[0].image
        # a batch mixing weighted and plain prompts gives each its own picture
        batch = backend.generate(make_units(key, [9, 9], prompt=[plain_prompt, weighted_prompt]))
    assert max_diff(plain, weighted) > 0
    assert weighted.tobytes() == again.tobytes()
    assert max_diff(plain, negative) > 0
    assert unit_weight.tobytes() == plain.tobytes()
    assert max_diff(batch[0].image, plain) <= 1 and max_diff(batch[1].image, weighted) <= 1


def test_a1111_to_compel_syntax():
    from diffspec.generate.prompts import a1111_to_compel

    assert a1111_to_compel("(masterpiece:1.3), a cat") == "(masterpiece)1.3, a cat"
    assert a1111_to_compel("a [dog] \\(pet\\)") == "a (dog)0.9091 \\(pet\\)"


@pytest.mark.parametrize("family", ["sd3", "flux", "kandinsky"])
def test_weighting_outside_sd_and_sdxl_is_refused(family, tiny_model):
    from diffspec.generate.backend import Backend

    size = 64 if family == "kandinsky" else 32
    key = make_key(tiny_model(family, "txt2img"), family, size=size, steps=2)
    with Backend(key) as backend:
        with pytest.raises(GenerationError, match="supported for families sd, sdxl only"):
            backend.generate(make_units(key, [1], prompt="a (cat:1.3)"))
        # escaped brackets are literal text and fine
        assert backend.generate(make_units(key, [1], prompt="a cat \\(tabby\\)"))[0].image.size == (size, size)


def test_unbalanced_weighting_is_a_generation_error(sd_backend, tiny_model):
    key = make_key(tiny_model("sd", "txt2img"), "sd", size=64, steps=4)
    with pytest.raises(GenerationError, match=r"unbalanced '\('"):
        sd_backend.generate(make_units(key, [1], prompt="a (cat on a mat"))


# ---------------------------------------------------------------------------------------- batching


def test_batch_of_one_and_of_four_give_the_same_pictures(sd_backend, tiny_model):
    key = make_key(tiny_model("sd", "txt2img"), "sd", size=64, steps=4)
    units = make_units(
        key,
        [101, 102, 103, 104],
        prompt=["a red apple", "a green pear", "a yellow banana on a long table", "grapes"],
        negative=["", "blurry", "", "low quality"],
    )
    batched = sd_backend.generate(units)
    single = [sd_backend.generate([unit])[0] for unit in units]
    diffs = [max_diff(a.image, b.image) for a, b in zip(batched, single)]
    print(f"\nbatch of 4 vs batch of 1, max per-pixel difference in 0..255 levels: {max(diffs)} (per image {diffs})")
    assert max(diffs) <= 2
    assert [g.fingerprint for g in batched] == [u.fingerprint for u in units]


@pytest.mark.parametrize("family", ["sdxl", "kandinsky"])
def test_mixed_negatives_do_not_couple_batch_mates(family, tiny_model):
    """SDXL zeroes an absent negative and Kandinsky's prior doubles its batch for negatives:
    either way a unit's picture must not depend on whether its batch mates have negatives."""
    from diffspec.generate.backend import Backend

    size = 64
    key = make_key(tiny_model(family, "txt2img"), family, size=size, steps=3)
    units = make_units(key, [1, 2, 3], prompt="a cat", negative=["", "blurry", ""])
    with Backend(key) as backend:
        batched = backend.generate(units)
        single = [backend.generate([unit])[0] for unit in units]
    assert max(max_diff(a.image, b.image) for a, b in zip(batched, single)) <= 2


# ---------------------------------------------------------------------------------------- text cache


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_each_distinct_text_is_encoded_once_and_gives_the_pipelines_own_pictures(tiny_model, family):
    """The embedding cache must be invisible: the same pictures as the pipeline encoding the
    strings itself, with each distinct prompt and negative encoded once across batches."""
    import torch

    from diffspec.generate.backend import Backend

    key = make_key(tiny_model(family, "txt2img"), family, size=32, steps=2, guidance=6.0)
    prompts = ["a red apple", "a green pear", "a red apple", "a green pear"]
    negatives = ["blurry", "", "blurry", ""]
    units = make_units(key, [1, 2, 3, 4], prompt=prompts, negative=negatives)
    with Backend(key) as backend:
        first = backend.generate(units[:2])
        second = backend.generate(units[2:])
        stats = backend._texts.stats()
        # SDXL zeroes an empty negative like its encode_prompt does, so "" is never encoded there.
        distinct = {"a red apple", "a green pear", "blurry"} | ({""} if family == "sd" else set())
        lookups = 2 * len(units) - (2 if family == "sdxl" else 0)
        assert (stats["misses"], stats["hits"]) == (len(distinct), lookups - len(distinct)), stats
        own = []
        for unit, negative in ((units[0], "blurry"), (units[1], None)):
            backend._use_scheduler(key)
            own.append(
                backend.pipe(
                    prompt=[unit.prompt],
                    negative_prompt=[negative] if negative else None,
                    num_inference_steps=2,
                    guidance_scale=6.0,
                    height=32,
                    width=32,
                    generator=[torch.Generator().manual_seed(unit.seed)],
                ).images[0]
            )
    # `first` ran as a batch of 2, `own` one by one: within float rounding (docs/determinism.md).
    assert max(max_diff(g.image, o) for g, o in zip(first, own)) <= 1
    # A unit's picture does not depend on the batch it ran in, nor on what the cache held.
    with Backend(key) as fresh:
        alone = fresh.generate([units[3]])
    assert max_diff(alone[0].image, second[1].image) <= 1
