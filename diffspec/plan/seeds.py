"""Seeds and the assignment of units to combinations (prompt variant x input image).

A unit is (combination, round): its seed is derived from those and the stream key, so nothing
here depends on a unit's place in a batch or in the plan, and a seed survives any change of
batch size, worker count or target. Vectorised with numpy: a million units take milliseconds.
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
        out: np.ndarray = z ^ (z >> np.uint64(31))
        return out


def derive_seeds(base_seed: int, stream: str, indices: np.ndarray) -> np.ndarray:
    """seed(i) = mix(base_seed, stream, i): 63-bit, so it fits torch.Generator.manual_seed. For
    streams whose members are numbered by their identity (a caption's variation index)."""
    salt = np.uint64(splitmix64(np.array([base_seed ^ key64("seed:" + stream)], dtype=np.uint64))[0])
    with np.errstate(over="ignore"):
        mixed = splitmix64(indices.astype(np.uint64) ^ salt)
    seeds: np.ndarray = (mixed & np.uint64(_SEED_MASK)).astype(np.int64)
    return seeds


def combination_seeds(base_seed: int, stream: str, combo_keys: np.ndarray, rounds: np.ndarray) -> np.ndarray:
    """seed = mix(base_seed, stream, combination, round): a unit is (combination, round), so its
    seed does not depend on how many other combinations there are or where it sits in the order."""
    salt = np.uint64(splitmix64(np.array([base_seed ^ key64("seed:" + stream)], dtype=np.uint64))[0])
    with np.errstate(over="ignore"):
        mixed = splitmix64(splitmix64(combo_keys.astype(np.uint64) ^ salt) ^ rounds.astype(np.uint64))
    seeds: np.ndarray = (mixed & np.uint64(_SEED_MASK)).astype(np.int64)
    return seeds


def balanced_assignment(stream: str, combo_keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Units 0..n-1 of a class over k combinations, in rounds: round r holds one unit of every
    combination, ordered by a hash of (stream, r, combination). Returns (combination, round) per
    unit. See docs/assignment.md for the guarantees:

    - every prefix is balanced: each combination has floor(n/k) or ceil(n/k) units;
    - unit i is the same for every n > i (raising a target keeps every unit);
    - a unit's identity is (combination, round), so adding combinations only takes units away
      from the old ones (their last rounds) and removing one only gives units to the rest.
    """
    k = len(combo_keys)
    if n == 0 or k == 0:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    if k == 1:
        return np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64)
    rounds_needed = -(-n // k)
    salt = np.uint64(key64("order:" + stream))
    round_keys = splitmix64(np.arange(rounds_needed, dtype=np.uint64) ^ salt)
    keys = combo_keys.astype(np.uint64)
    if rounds_needed == 1:
        # Fewer units than combinations: only the n best-scored combinations of round 0 are needed.
        scores = ~splitmix64(keys ^ round_keys[0])  # ascending order of ~score = descending score
        best = np.argpartition(scores, n - 1)[:n] if n < k else np.arange(k)
        combo_of = best[np.argsort(scores[best], kind="stable")].astype(np.int64)
        return combo_of, np.zeros(n, dtype=np.int64)
    scores = ~splitmix64(keys[None, :] ^ round_keys[:, None])
    order = np.argsort(scores, axis=1, kind="stable").astype(np.int64)
    combo_of = order.ravel()[:n]
    rounds = np.repeat(np.arange(rounds_needed, dtype=np.int64), k)[:n]
    return combo_of, rounds
