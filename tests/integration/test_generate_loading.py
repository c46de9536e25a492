"""Loading: dtypes, the built-in model, and every user mistake as a GenerationError (no traceback)."""

from __future__ import annotations

import logging

import pytest

try:
    from tiny_models import *  # noqa: F403
except ImportError:  # pragma: no cover
    from tests.integration.tiny_models import *  # noqa: F403

from diffspec.errors import GenerationError
from diffspec.plan.unit import ModelRef

pytestmark = pytest.mark.usefixtures("single_thread")


def _backend(model: ModelRef, mode: str = "txt2img", **key_fields):
    from diffspec.generate.backend import Backend

    return Backend(make_key(model.source, model.family, mode, model=model, **key_fields))


def test_local_folder_without_model_index_is_a_generation_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(GenerationError, match="has no model_index.json"):
        _backend(ModelRef("m", str(tmp_path), "sd"))


def test_missing_local_folder_is_a_generation_error(tmp_path):
    with pytest.raises(GenerationError, match="does not exist"):
        _backend(ModelRef("m", str(tmp_path / "nowhere"), "sd"))


def test_uncached_hub_id_is_a_generation_error_saying_offline():
    with pytest.raises(GenerationError, match="not available offline") as info:
        _backend(ModelRef("m", "diffspec-test/definitely-not-cached-model", "sd"))
    assert "huggingface-cli download diffspec-test/definitely-not-cached-model" in str(info.value)
    assert "Reason:" in str(info.value)


def test_relative_path_typo_gets_a_local_folder_hint():
    with pytest.raises(GenerationError, match="if 'models/sd15' is meant as a local folder, it does not exist"):
        _backend(ModelRef("m", "models/sd15", "sd"))


def test_kandinsky_decoder_without_prior_is_a_generation_error(tiny_model, tmp_path):
    import json
    import shutil

    folder = tmp_path / "decoder-only"
    shutil.copytree(tiny_model("kandinsky", "txt2img"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index = {k: v for k, v in index.items() if not k.startswith("prior_")}
    index["_class_name"] = "KandinskyV22Pipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(GenerationError, match="decoder without its prior"):
        _backend(ModelRef("m", str(folder), "kandinsky"), size=64)


def test_family_that_does_not_match_the_folder_is_a_generation_error(tiny_model):
    with pytest.raises(GenerationError, match="holds a sd pipeline but the model entry says family 'sdxl'"):
        _backend(ModelRef("m", str(tiny_model("sd", "txt2img")), "sdxl"))


def test_controlnet_mode_without_controlnet_weights_is_a_generation_error(tiny_model):
    model = ModelRef("m", str(tiny_model("sd", "txt2img")), "sd")
    with pytest.raises(GenerationError, match="needs ControlNet weights"):
        _backend(model, "controlnet")


def test_img2img_unit_without_input_image_is_a_generation_error(tiny_model):
    from diffspec.generate.backend import Backend

    key = make_key(tiny_model("sd", "img2img"), "sd", "img2img")
    with Backend(key) as backend:
        with pytest.raises(GenerationError, match="has no input image"):
            backend.generate(make_units(key, [1]))


def test_size_the_family_cannot_make_is_a_generation_error(tiny_model):
    from diffspec.generate.backend import Backend

    key = make_key(tiny_model("flux", "txt2img"), "flux", size=40)
    with Backend(key) as backend:
        with pytest.raises(GenerationError, match="multiples of 16"):
            backend.generate(make_units(key, [1]))


def test_units_of_another_model_are_refused(tiny_model):
    from diffspec.generate.backend import Backend

    key = make_key(tiny_model("sd", "txt2img"), "sd")
    other = make_key(tiny_model("sd", "img2img"), "sd")
    with Backend(key) as backend:
        with pytest.raises(ValueError, match="share one PipelineKey"):
            backend.generate(make_units(key, [1]) + make_units(make_key(key.model.source, "sd", steps=5), [2]))
        with pytest.raises(ValueError, match="another model"):
            backend.generate(make_units(other, [1]))


def test_bfloat16_runs_on_cpu_and_float16_falls_back_to_float32(tiny_model, caplog):
    import torch

    from diffspec.generate.backend import Backend

    folder = str(tiny_model("sd", "txt2img"))
    bf16 = make_key(folder, "sd", model=ModelRef("m", folder, "sd", dtype="bfloat16"))
    with Backend(bf16) as backend:
        assert backend.pipe.unet.dtype == torch.bfloat16
        assert backend.generate(make_units(bf16, [1]))[0].image.size == (32, 32)
    fp16 = make_key(folder, "sd", model=ModelRef("m", folder, "sd", dtype="float16"))
    with caplog.at_level(logging.WARNING, logger="diffspec.generate.loading"):
        with Backend(fp16) as backend:
            assert backend.pipe.unet.dtype == torch.float32
    assert any("float16 is not usable on CPU" in r.message for r in caplog.records)
    auto = make_key(folder, "sd")
    with Backend(auto) as backend:
        assert backend.pipe.unet.dtype == torch.float32


def test_safety_checker_is_off_and_logged(tiny_model, caplog):
    from diffspec.generate.loading import load_pipeline

    with caplog.at_level(logging.INFO, logger="diffspec.generate.loading"):
        pipe = load_pipeline(make_key(tiny_model("sd", "txt2img"), "sd"), "cpu")
    assert pipe.safety_checker is None
    assert any("safety checker is off" in r.message for r in caplog.records)


@pytest.fixture
def digits_source(tmp_path, monkeypatch):
    """builtin:digits: the shipped weights when present, else an untrained DigitsPipeline saved
    to a temporary folder (so the loader path is tested while the weights are being made)."""
    try:
        import diffspec.generate.builtin as builtin
        from diffspec.generate.builtin.digits import DigitsPipeline
    except ImportError as exc:
        pytest.skip(f"builtin:digits is not available yet: {exc}")
    try:
        if (builtin.builtin_path("digits") / "model_index.json").is_file():
            return "shipped"
    except FileNotFoundError:
        pass
    try:
        from diffspec.generate.builtin.train_digits import build_scheduler, build_unet
    except ImportError as exc:
        pytest.skip(f"builtin:digits has no weights and no builder yet: {exc}")
    DigitsPipeline(unet=build_unet(), scheduler=build_scheduler()).save_pretrained(tmp_path / "digits")
    monkeypatch.setattr(builtin, "builtin_path", lambda name="digits": tmp_path / name)
    return "untrained"


def test_builtin_digits_loads_through_the_backend(digits_source):
    from diffspec.generate.backend import Backend

    model = ModelRef("digits", "builtin:digits", "builtin")
    key = make_key("builtin:digits", "builtin", model=model, size=32, steps=8)
    with Backend(key) as backend:
        first = backend.generate(make_units(key, [1, 2], prompt="a handwritten 7"))
        again = backend.generate(make_units(key, [1, 2], prompt="a handwritten 7"))
        swapped_key = make_key("builtin:digits", "builtin", model=model, size=32, steps=8, scheduler="ddim")
        swapped = backend.generate(make_units(swapped_key, [1], prompt="a handwritten 7"))[0].image
        assert backend.scheduler_config(swapped_key)["_class_name"] == "DDIMScheduler"
        with pytest.raises(GenerationError, match="supported for families sd, sdxl only"):
            backend.generate(make_units(key, [1], prompt="a (handwritten:1.2) 7"))
    assert [g.image.tobytes() for g in first] == [g.image.tobytes() for g in again]
    assert first[0].image.tobytes() != first[1].image.tobytes()
    assert first[0].image.size == (32, 32) and swapped.size == (32, 32)
    assert max_diff(first[0].image, swapped) > 0
    with pytest.raises(GenerationError, match="txt2img only"):
        _backend(model, "img2img")


def test_not_fully_cached_message_counts_as_offline(monkeypatch):
    # diffusers words a missing snapshot this way when local_files_only was forced by an
    # earlier failed lookup; it must still get the "download it once" advice.
    from huggingface_hub import constants

    from diffspec.generate.loading import _is_offline_error

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    exc = OSError(
        "Cannot load model x/y: the model is not fully cached locally (Cannot find an appropriate cached "
        "snapshot folder for the specified revision on the local disk and outgoing traffic has been disabled.)"
    )
    assert _is_offline_error(exc)
    assert not _is_offline_error(ValueError("unexpected key in state dict"))
