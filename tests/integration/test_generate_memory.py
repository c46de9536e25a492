"""Memory strategies run on CPU (slicing, tiling) or are logged no-ops there (offload)."""

from __future__ import annotations

import logging

import pytest

try:
    from tiny_models import *  # noqa: F403
except ImportError:  # pragma: no cover
    from tests.integration.tiny_models import *  # noqa: F403

from diffspec.errors import GenerationError
from diffspec.generate.memory import STRATEGIES, escalate, is_out_of_memory

pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_strategy_runs_on_cpu(tiny_model, caplog):
    from diffspec.generate.backend import Backend

    # 96 px is larger than the tiny VAE's 64 px tile, so vae_tiling really decodes in tiles
    key = make_key(tiny_model("sd", "txt2img"), "sd", size=96, steps=3)
    units = make_units(key, [21, 22])
    images = {}
    with Backend(key, strategy="none") as backend:
        assert not any(backend.memory_effect.values())
        for strategy in STRATEGIES:
            with caplog.at_level(logging.INFO, logger="diffspec.generate.memory"):
                backend.set_strategy(strategy)
            effect = backend.memory_effect
            out = backend.generate(units)
            assert [g.image.size for g in out] == [(96, 96)] * 2
            images[strategy] = out[0].image
            if strategy != "none":
                assert effect["attention_slicing"]
            if strategy in ("vae_tiling", "model_offload", "sequential_offload"):
                assert effect["vae_tiling"] and effect["vae_slicing"]
            assert not effect["model_offload"] and not effect["sequential_offload"]  # CPU: nothing to offload to
        assert any("no-op on CPU" in r.message for r in caplog.records)
        backend.set_strategy("none")
        assert backend.generate(units)[0].image.tobytes() == images["none"].tobytes()
    # slicing computes the same attention in pieces
    assert max_diff(images["none"], images["attention_slicing"]) <= 2
    # tiling decodes overlapping tiles and blends them: a different decode, so the picture moves
    print(f"\nnone vs vae_tiling max diff: {max_diff(images['none'], images['vae_tiling'])}")
    assert max_diff(images["none"], images["vae_tiling"]) > 0
    assert images["vae_tiling"].tobytes() == images["model_offload"].tobytes()


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux", "kandinsky"])
def test_cpu_strategies_run_for_every_family(family, tiny_model):
    from diffspec.generate.backend import Backend

    size = 64 if family == "kandinsky" else 32
    key = make_key(tiny_model(family, "txt2img"), family, size=size, steps=2)
    with Backend(key, strategy="sequential_offload") as backend:  # the most frugal: all CPU features on
        assert backend.memory_effect["vae_tiling"] or family == "kandinsky"
        assert backend.generate(make_units(key, [1]))[0].image.size == (size, size)


def test_escalation_order_and_oom_detection():
    import torch

    chain, strategy = [], "none"
    while strategy is not None:
        chain.append(strategy)
        strategy = escalate(strategy)
    assert chain == list(STRATEGIES)
    with pytest.raises(GenerationError, match="unknown memory strategy"):
        escalate("turbo")
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate memory")
    )
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
