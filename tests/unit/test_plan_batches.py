"""Batching: units grouped by pipeline key, sized per key, in a deterministic order."""

from __future__ import annotations

import random

from diffspec.plan.batches import make_batches
from diffspec.plan.unit import ModelRef, PipelineKey, WorkUnit, fingerprint_of


def key(model: str = "m", steps: int = 2, size: int = 32) -> PipelineKey:
    return PipelineKey(ModelRef(model, f"/models/{model}", "sd"), "txt2img", "ddim", (), size, size, steps, 7.5)


def unit(k: PipelineKey, cls: str, index: int, prompt: str = "p") -> WorkUnit:
    return WorkUnit(fingerprint_of(k, prompt, "", index), k, cls, index, index, prompt, "")


def test_units_of_one_key_share_batches_up_to_the_size_and_others_never_mix() -> None:
    k1, k2 = key(steps=2), key(steps=4)
    units = (
        [unit(k1, "a", i) for i in range(5)]
        + [unit(k2, "b", i) for i in range(3)]
        + [unit(k1, "c", i, "q") for i in range(2)]
    )
    batches = make_batches(units, lambda k: 4)
    assert [len(b) for b in batches] == [4, 3, 3]
    for b in batches:
        assert all(u.key == b.key for u in b.units)
    # k1's units (classes a and c) fill batches together, in (class, index) order
    assert [(u.class_name, u.index) for u in batches[0].units + batches[1].units] == [("a", i) for i in range(5)] + [
        ("c", 0),
        ("c", 1),
    ]
    assert [b.id for b in batches] == [0, 1, 2]


def test_order_is_deterministic_whatever_order_the_units_come_in() -> None:
    ks = [key(steps=s) for s in (2, 3)] + [key("other")]
    units = [unit(ks[i % 3], f"c{i % 4}", i) for i in range(40)]
    first = make_batches(units, lambda k: 3)
    shuffled = units[:]
    random.Random(0).shuffle(shuffled)
    again = make_batches(shuffled, lambda k: 3)
    assert [[u.fingerprint for u in b.units] for b in first] == [[u.fingerprint for u in b.units] for b in again]


def test_batches_of_one_model_stay_together_so_a_worker_never_reloads() -> None:
    m1a, m2, m1b = key("m1", steps=2), key("m2"), key("m1", steps=5)
    units = [unit(m1a, "a", 0), unit(m2, "b", 0), unit(m1b, "c", 0), unit(m2, "d", 0)]
    order = [b.key.model.name for b in make_batches(units, lambda k: 8)]
    assert order == ["m1", "m1", "m2"]


def test_sizes_and_strategies_come_from_the_memory_plan_per_key() -> None:
    small, big = key(size=32), key(size=512)
    units = [unit(small, "a", i) for i in range(6)] + [unit(big, "b", i) for i in range(6)]
    batches = make_batches(
        units, lambda k: 6 if k.width == 32 else 2, lambda k: "none" if k.width == 32 else "vae_tiling"
    )
    assert [(len(b), b.strategy) for b in batches] == [
        (6, "none"),
        (2, "vae_tiling"),
        (2, "vae_tiling"),
        (2, "vae_tiling"),
    ]
