"""Every supported (family, mode) runs for real on a tiny model loaded through from_pretrained."""

from __future__ import annotations

import pytest

try:
    from tiny_models import *  # noqa: F403
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.integration.tiny_models import *  # noqa: F403

from diffspec.generate.tiny import TINY_SUPPORTED

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(("family", "mode"), TINY_SUPPORTED, ids=[f"{f}-{m}" for f, m in TINY_SUPPORTED])
def test_family_mode_makes_seeded_reproducible_images(family, mode, tiny_model, input_images):
    from diffspec.generate.backend import Backend

    size = 64 if family == "kandinsky" else 32  # Kandinsky 2.2 makes multiples of 64
    key = make_key(tiny_model(family, mode), family, mode, size=size)
    units = make_units(key, [11, 12], inputs=input_images)
    with Backend(key) as backend:
        first = backend.generate(units)
        again = backend.generate(units)
        config = backend.scheduler_config(key)

    assert [g.fingerprint for g in first] == [u.fingerprint for u in units]
    for generated in first:
        assert generated.image.size == (size, size)
        assert generated.image.mode == "RGB"
        assert generated.seconds > 0
    # the same seed gives identical bytes twice
    assert [g.image.tobytes() for g in first] == [g.image.tobytes() for g in again]
    # two seeds give two images
    assert first[0].image.tobytes() != first[1].image.tobytes()
    assert config["_class_name"].endswith("Scheduler")


def test_controlnet_output_follows_the_control_image(tiny_model, input_images):
    from diffspec.generate.backend import Backend

    key = make_key(tiny_model("sd", "controlnet"), "sd", "controlnet", size=64)
    a = make_units(key, [5], inputs=input_images, input_name="photo_a")
    b = make_units(key, [5], inputs=input_images, input_name="photo_b")
    with Backend(key) as backend:
        image_a, image_b = backend.generate(a)[0].image, backend.generate(b)[0].image
    assert max_diff(image_a, image_b) > 0


def test_unsupported_pair_is_a_generation_error(tiny_model):
    from diffspec.errors import GenerationError
    from diffspec.generate.backend import Backend

    key = make_key(tiny_model("kandinsky", "txt2img"), "kandinsky", "controlnet")
    with pytest.raises(GenerationError, match="not supported for Kandinsky"):
        Backend(key)
