"""Speed options on real tiny pipelines: each one is really applied, the pixel-changing ones
change pixels and the others stay within float rounding, a step cache never carries state from
one call into the next, and what cannot run here is a GenerationError naming model and option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    from tiny_models import *  # noqa: F403
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.integration.tiny_models import *  # noqa: F403

from diffspec.errors import GenerationError
from diffspec.plan.compile import speed_options
from diffspec.plan.unit import SpeedOptions
from diffspec.spec.model import SpeedSpec

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 8


def _speed(**spec: Any) -> SpeedOptions:
    return speed_options(SpeedSpec.model_validate(spec))


def _flux(tiny_model, speed: SpeedOptions, mode: str = "txt2img"):
    return make_key(tiny_model("flux", mode), "flux", mode, steps=STEPS, speed=speed)


def _images(backend, units) -> list[np.ndarray]:
    return [pixels(g.image) for g in backend.generate(units)]


@pytest.fixture(scope="module")
def off_images(tiny_model) -> list[np.ndarray]:
    from diffspec.generate.backend import Backend

    key = _flux(tiny_model, SpeedOptions())
    with Backend(key) as backend:
        return _images(backend, make_units(key, [1, 2, 3]))


CACHES = {
    # first_block at its default threshold skips nothing on the random tiny model: a high one does
    "first_block": {"first_block": {"threshold": 1.0}},
    "taylorseer": {"taylorseer": {}},
    "magcache": {"magcache": {}},
    "pyramid_attention_broadcast": {"pyramid_attention_broadcast": {}},
}


@pytest.mark.parametrize("kind", list(CACHES))
def test_a_step_cache_is_enabled_on_the_transformer_and_changes_pixels(tiny_model, off_images, kind: str) -> None:
    import diffusers

    from diffspec.generate.backend import Backend
    from diffspec.tables.speed import CACHE_CLASSES

    key = _flux(tiny_model, _speed(cache=CACHES[kind]))
    with Backend(key) as backend:
        transformer = backend.pipe.transformer
        images = _images(backend, make_units(key, [1, 2, 3]))
        again = _images(backend, make_units(key, [1, 2, 3]))
        config = transformer._cache_config
    assert isinstance(config, getattr(diffusers, CACHE_CLASSES[kind]))
    assert max(int(np.abs(a - b).max()) for a, b in zip(images, off_images)) > 0
    assert all((a == b).all() for a, b in zip(images, again)), "a second call must start from a fresh cache"


def test_magcache_follows_the_step_count_of_each_call(tiny_model) -> None:
    from diffspec.generate.backend import Backend

    speed = _speed(cache={"magcache": {}})
    key = _flux(tiny_model, speed)
    fewer = make_key(tiny_model("flux", "txt2img"), "flux", steps=4, speed=speed)
    with Backend(key) as backend:
        backend.generate(make_units(fewer, [1]))
        assert backend.pipe.transformer._cache_config.num_inference_steps == 4
        backend.generate(make_units(key, [1]))
        assert backend.pipe.transformer._cache_config.num_inference_steps == STEPS


def test_a_failed_call_leaves_no_cache_state_behind(tiny_model) -> None:
    """A call that dies mid-loop never reaches diffusers' own reset (maybe_free_model_hooks): the
    next call must still start clean, or a retried unit would get other pixels."""
    from diffspec.generate.backend import Backend

    key = _flux(tiny_model, _speed(cache={"taylorseer": {"disable_cache_before_step": 1, "cache_interval": 2}}))
    units = make_units(key, [4])
    with Backend(key) as backend:
        clean = _images(backend, units)
        block = backend.pipe.transformer.transformer_blocks[0]
        calls = {"n": 0}
        original = block.forward

        def dies_at_step_four(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 4:
                raise RuntimeError("injected failure")
            return original(*args, **kwargs)

        block.forward = dies_at_step_four
        with pytest.raises(RuntimeError, match="injected"):
            backend.generate(units)
        block.forward = original
        after = _images(backend, units)
    assert (after[0] == clean[0]).all()


def _pipeline_calls(backend: Any, units: list[Any]) -> int:
    pipe = backend.pipe
    calls = {"n": 0}
    original = type(pipe).__call__

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(self, *args, **kwargs)

    type(pipe).__call__ = counting
    try:
        backend.generate(units)
    finally:
        type(pipe).__call__ = original
    return calls["n"]


def test_first_block_cache_runs_one_image_per_call(tiny_model) -> None:
    """It decides from the batch mean: batched, an image would depend on its batch mates."""
    from diffspec.generate.backend import Backend

    counts: dict[str, int] = {}
    for kind in ("first_block", "taylorseer"):
        key = _flux(tiny_model, _speed(cache=CACHES[kind]))
        with Backend(key) as backend:
            counts[kind] = _pipeline_calls(backend, make_units(key, [1, 2, 3]))
    assert counts == {"first_block": 3, "taylorseer": 1}


def test_rounding_only_options_are_applied_and_keep_pixels_within_one_level(tiny_model, off_images) -> None:
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from diffspec.generate.backend import Backend

    before = _AttentionBackendRegistry._active_backend
    speed = _speed(channels_last=True, attention="_native_math", compile={"backend": "eager"})
    key = _flux(tiny_model, speed)
    with Backend(key) as backend:
        pipe = backend.pipe
        images = _images(backend, make_units(key, [1, 2, 3]))
        conv = next(m for m in pipe.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        backends = {
            getattr(m.processor, "_attention_backend", None)
            for m in pipe.transformer.modules()
            if hasattr(m, "processor")
        }
        assert backends == {AttentionBackendName("_native_math")}
        assert pipe.transformer._compiled_call_impl is not None
        described = backend.speed.describe()
    # the process-wide default is left as it was, so a model loaded next does not inherit it
    assert _AttentionBackendRegistry._active_backend == before
    assert max(int(np.abs(a - b).max()) for a, b in zip(images, off_images)) <= 1
    assert described == {
        "attention": "_native_math",
        "channels_last": True,
        "compile": {"backend": "eager", "dynamic": None, "fullgraph": False, "mode": "default", "regional": False},
    }


@pytest.mark.slow
def test_inductor_compile_runs_on_this_cpu_within_one_level(tiny_model, off_images) -> None:
    """Inductor compiles C++ here (gcc); regional compilation keeps the first call short."""
    from diffspec.generate.backend import Backend

    key = _flux(tiny_model, _speed(compile={"regional": True}))
    with Backend(key) as backend:
        images = _images(backend, make_units(key, [1, 2, 3]))
    assert max(int(np.abs(a - b).max()) for a, b in zip(images, off_images)) <= 1


def test_an_attention_backend_not_installed_here_is_a_generation_error(tiny_model) -> None:
    import importlib.util

    from diffspec.generate.backend import Backend

    assert importlib.util.find_spec("xformers") is None, "the test needs a backend that is not installed"
    with pytest.raises(GenerationError, match=r"model 'tiny-flux': speed\.attention: backend 'xformers' cannot run"):
        Backend(_flux(tiny_model, _speed(attention="xformers")))


def test_inductor_without_a_cpu_compiler_is_a_generation_error_at_load(tiny_model, monkeypatch) -> None:
    import shutil

    from diffspec.generate.backend import Backend

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(GenerationError, match=r"model 'tiny-flux': speed\.compile: .*needs a C\+\+ compiler"):
        Backend(_flux(tiny_model, _speed(compile=True)))


def test_options_a_unet_model_cannot_take_are_generation_errors_from_the_python_api(tiny_model) -> None:
    """The spec refuses these at validate time; a hand-built ModelRef gets the same message."""
    from diffspec.generate.backend import Backend

    for speed, option in ((_speed(cache={"taylorseer": {}}), "cache"), (_speed(attention="flex"), "attention")):
        key = make_key(tiny_model("sd", "txt2img"), "sd", speed=speed)
        with pytest.raises(GenerationError, match=rf"model 'tiny-sd': speed\.{option}: .*family 'sd'"):
            Backend(key)


def test_the_run_record_and_the_load_event_carry_the_speed_options(tmp_path: Path, tiny_model) -> None:
    from diffspec.catalog.store import Catalog
    from diffspec.project import Project

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""\
version: 1
dataset: fast
output: out
models:
  flux:
    source: "{tiny_model("flux", "txt2img")}"
    speed: {{channels_last: true, attention: _native_math, cache: {{taylorseer: {{}}}}}}
defaults: {{model: flux, size: [32, 32], steps: 4, guidance: 3.5}}
budget: {{devices: cpu, max_batch: 2}}
classes:
  apple: {{target: 2, prompt: a red apple}}
""",
        encoding="utf-8",
    )
    project = Project(spec)
    project.apply(project.plan(), progress=False)
    runs = Catalog(tmp_path / "out").read_table("runs").to_pylist()
    finished = [r for r in runs if r["phase"] == "finished"]
    assert len(finished) == 1
    speed = json.loads(finished[0]["speed"])
    assert speed["flux"]["channels_last"] is True
    assert speed["flux"]["attention"] == "_native_math"
    assert speed["flux"]["cache"]["taylorseer"]["cache_interval"] == 5
    loads = [e for e in json.loads(finished[0]["log"]) if e["event"] == "load"]
    assert loads and loads[0]["speed"] == speed["flux"]
