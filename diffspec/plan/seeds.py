"""Seeds and variant assignment, both derived from a unit's identity (stream key, index).

Nothing here depends on a unit's place in a batch or in the plan, so a seed survives any
change of batch size, worker count or target. Vectorised with numpy: a million units take
milliseconds.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_SEED_MASK = (1 << 63) - 1


def key64(text: str) -> int:
    """A stable 64-bit integer for a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixed hash of 64-bit integers."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def derive_seeds(base_seed: int, stream: str, indices: np.ndarray) -> np.ndarray:
    """seed(i) = mix(base_seed, stream, i): 63-bit, so it fits torch.Generator.manual_seed."""
    salt = np.uint64(splitmix64(np.array([base_seed ^ key64("seed:" + stream)], dtype=np.uint64))[0])
    with np.errstate(over="ignore"):
        mixed = splitmix64(indices.astype(np.uint64) ^ salt)
    return (mixed & np.uint64(_SEED_MASK)).astype(np.int64)


def rendezvous(stream: str, indices: np.ndarray, choice_keys: list[str], salt: str = "variant") -> np.ndarray:
    """Highest-random-weight assignment of each unit to one of `choice_keys`.

    Adding a choice moves about 1/(k+1) of the units (those it now wins), removing one moves
    only the units it held, and renaming nothing else moves nothing: each (unit, choice) weight
    depends only on the two identities.
    """
    n = len(indices)
    if len(choice_keys) <= 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    unit_keys = splitmix64(indices.astype(np.uint64) ^ np.uint64(key64(f"{salt}:{stream}")))
    best = np.zeros(n, dtype=np.int64)
    best_weight = np.zeros(n, dtype=np.uint64)
    for j, choice in enumerate(choice_keys):
        weight = splitmix64(unit_keys ^ np.uint64(key64(choice)))
        better = weight > best_weight
        if j == 0:
            better[:] = True
        best[better] = j
        best_weight[better] = weight[better]
    return best
