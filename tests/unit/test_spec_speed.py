"""Speed options (`models.<m>.speed`): validated with positions, in the fingerprint exactly when
they change pixels, and their tables in step with the installed diffusers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from diffspec.errors import SpecError
from diffspec.plan.compile import compile_spec
from diffspec.spec.loader import load_spec
from diffspec.tables.speed import ATTENTION_BACKENDS, CACHE_CLASSES


def _write(tmp_path: Path, speed: str, *, source: str = "black-forest-labs/FLUX.1-schnell", cls: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        version: 1
        dataset: d
        models:
          m:
            source: {source}
            speed: {speed}
        defaults: {{size: [256, 256], steps: 4}}
        classes:
          c: {{prompt: a red apple, target: 3{cls}}}
        """),
        encoding="utf-8",
    )
    return path


def _fingerprints(tmp_path: Path, speed: str) -> list[str]:
    units = compile_spec(load_spec(_write(tmp_path, speed)))
    return list(units["c"].fingerprints)


def _problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return [str(p) for p in info.value.problems]


BASE = "{}"


@pytest.mark.parametrize(
    "speed",
    [
        "{compile: true}",
        "{compile: {mode: max-autotune, regional: true, dynamic: false}}",
        "{channels_last: true}",
        "{attention: flash}",
        "{attention: _native_math}",
        "{attention: flex, compile: true, channels_last: true}",
    ],
)
def test_options_that_change_only_rounding_keep_every_fingerprint(tmp_path: Path, speed: str) -> None:
    assert _fingerprints(tmp_path, speed) == _fingerprints(tmp_path, BASE)


@pytest.mark.parametrize(
    "speed",
    [
        "{cache: {first_block: {}}}",
        "{cache: {taylorseer: {cache_interval: 3}}}",
        "{cache: {magcache: {}}}",
        "{cache: {pyramid_attention_broadcast: {}}}",
        "{attention: sage}",  # int8 Q/K: an approximation of attention
    ],
)
def test_options_that_change_pixels_change_every_fingerprint(tmp_path: Path, speed: str) -> None:
    changed = _fingerprints(tmp_path, speed)
    assert not set(changed) & set(_fingerprints(tmp_path, BASE))


def test_a_cache_parameter_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    low = _fingerprints(tmp_path, "{cache: {first_block: {threshold: 0.05}}}")
    high = _fingerprints(tmp_path, "{cache: {first_block: {threshold: 0.2}}}")
    assert not set(low) & set(high)
    # the default written out is the default: the same units
    assert low == _fingerprints(tmp_path, "{cache: {first_block: {}}}")


def test_the_spec_hash_covers_non_pixel_options(tmp_path: Path) -> None:
    """A plan file made before `compile: true` was added must not apply as if nothing changed."""
    plain = load_spec(_write(tmp_path, BASE)).content_hash
    assert load_spec(_write(tmp_path, "{compile: true}")).content_hash != plain


def test_attention_on_a_unet_family_is_refused_at_its_position(tmp_path: Path) -> None:
    path = _write(tmp_path, "{attention: flex}", source="stabilityai/stable-diffusion-2-1")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:6:") or problem.startswith("spec.yaml:6:")
    assert "model 'm'" in problem and "family 'sd'" in problem and "Remove `attention`" in problem


def test_a_step_cache_on_a_model_without_cache_support_is_refused_at_its_position(tmp_path: Path) -> None:
    path = _write(tmp_path, "{cache: {taylorseer: {}}}", source="stabilityai/stable-diffusion-3-medium-diffusers")
    (problem,) = _problems(path)
    assert ":6:" in problem
    assert "family 'sd3'" in problem and "Remove `cache`" in problem


def test_an_unknown_attention_backend_names_the_choices(tmp_path: Path) -> None:
    (problem,) = _problems(_write(tmp_path, "{attention: flsh}"))
    assert ":6:" in problem
    assert "did you mean 'flash'?" in problem
    assert "native" in problem and "xformers" in problem and "sage" in problem


def test_a_cache_must_name_exactly_one_kind(tmp_path: Path) -> None:
    (problem,) = _problems(_write(tmp_path, "{cache: {first_block: {}, magcache: {}}}"))
    assert "exactly one step cache" in problem and "first_block, magcache" in problem
    (problem,) = _problems(_write(tmp_path, "{cache: {}}"))
    assert "exactly one step cache" in problem


def test_a_misspelled_cache_parameter_gets_a_suggestion(tmp_path: Path) -> None:
    (problem,) = _problems(_write(tmp_path, "{cache: {taylorseer: {cache_intervl: 3}}}"))
    assert "unknown key `cache_intervl`; did you mean 'cache_interval'?" in problem


def test_magcache_is_refused_for_img2img_at_the_class(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    path = _write(tmp_path, "{cache: {magcache: {}}}", cls=", mode: img2img, input: {images: in.png}")
    (problem,) = _problems(path)
    assert ":9:" in problem  # the class line
    assert "magcache" in problem and "img2img" in problem


def test_attention_table_matches_the_installed_diffusers() -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    assert set(ATTENTION_BACKENDS) == {b.value for b in AttentionBackendName}


def test_cache_table_names_real_diffusers_configs_and_the_families_are_right() -> None:
    import diffusers
    from diffusers.models.cache_utils import CacheMixin

    for class_name in CACHE_CLASSES.values():
        assert hasattr(diffusers, class_name)
    # CACHE_FAMILIES / ATTENTION_FAMILIES say flux only: FLUX's transformer has both, SD3's and
    # the UNet have neither (their attention calls SDPA directly).
    assert issubclass(diffusers.FluxTransformer2DModel, CacheMixin)
    assert not issubclass(diffusers.SD3Transformer2DModel, CacheMixin)
    assert not issubclass(diffusers.UNet2DConditionModel, CacheMixin)
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    assert hasattr(FluxAttnProcessor, "_attention_backend")
    from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

    assert not hasattr(AttnProcessor2_0, "_attention_backend")
    assert not hasattr(JointAttnProcessor2_0, "_attention_backend")
