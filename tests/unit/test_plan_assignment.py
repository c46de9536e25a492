"""The assignment of units to combinations (docs/assignment.md): balanced for every target,
stable when a target rises, and minimal when a value is added to or removed from a var.

A unit is (combination, round); "moved" counts the units of the old plan that are not in the
new one (their image would be removed and another made in its place).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from diffspec.plan.compile import compile_spec
from diffspec.plan.seeds import balanced_assignment, key64
from diffspec.spec.loader import load_spec


def units_of(stream: str, combos: list[tuple[str, ...]], n: int) -> list[tuple[tuple[str, ...], int]]:
    keys = np.array([key64("\x1f".join(c)) for c in combos], dtype=np.uint64)
    combo_of, rounds = balanced_assignment(stream, keys, n)
    return [(combos[c], r) for c, r in zip(combo_of.tolist(), rounds.tolist())]


def moved(before: list[Any], after: list[Any]) -> int:
    return len(set(before) - set(after))


products = st.lists(st.integers(2, 6), min_size=2, max_size=4).map(
    lambda sizes: [[f"v{j}_{i}" for i in range(m)] for j, m in enumerate(sizes)]
)


@settings(max_examples=200, deadline=None)
@given(values=products, n=st.integers(0, 3000), more=st.integers(1, 500), stream=st.text(max_size=8), data=st.data())
def test_balanced_stable_and_minimal(
    values: list[list[str]], n: int, more: int, stream: str, data: st.DataObject
) -> None:
    combos = list(itertools.product(*values))
    k = len(combos)
    units = units_of(stream, combos, n)

    # Every combination within floor(n/k)..ceil(n/k); a unit is never listed twice.
    counts = Counter(c for c, _ in units)
    assert all(n // k <= counts.get(c, 0) <= -(-n // k) for c in combos)
    assert len(set(units)) == n

    # Raising the target keeps every unit where it was (the first n in order are the same).
    assert units_of(stream, combos, n + more)[:n] == units

    var = data.draw(st.integers(0, len(values) - 1), label="var")
    m = len(values[var])

    # Adding a value to a var of m values: the new combinations take their share and nothing else
    # moves; for n >= k' that is at most 2n/(m+1) (in fact at most ceil(n/k') per new combination).
    grown = [list(v) for v in values]
    grown[var].append(f"v{var}_new")
    combos_added = list(itertools.product(*grown))
    k_added = len(combos_added)
    added = units_of(stream, combos_added, n)
    new_combos = set(combos_added) - set(combos)
    moved_add = moved(units, added)
    assert moved_add == sum(c in new_combos for c, _ in added)  # only units the new value took
    assert moved_add <= -(-n // k_added) * len(new_combos)
    if n >= k_added:
        assert moved_add <= 2 * n / (m + 1)
    else:  # fewer units than combinations: which combinations get one at all is a hashed choice
        assert moved_add <= min(n, len(new_combos))

    # Removing a value: only its own units go, and no unit of another combination moves.
    gone = data.draw(st.integers(0, m - 1), label="gone")
    shrunk = [list(v) for v in values]
    del shrunk[var][gone]
    removed = units_of(stream, list(itertools.product(*shrunk)), n)
    own = [u for u in units if u[0][var] == values[var][gone]]
    assert set(units) - set(removed) == set(own)
    assert moved(units, removed) - len(own) == 0 <= n / m


def test_eighteen_units_over_three_by_three_cover_every_combination() -> None:
    """The issue's case: 18 units over a 3x3 product came out [5, 3, 2, 2, 2, 2, 1, 1, 0]."""
    combos = list(itertools.product(["a", "b", "c"], ["x", "y", "z"]))
    counts = Counter(c for c, _ in units_of("cls", combos, 18))
    assert sorted(counts.values()) == [2] * 9


README_SPEC = """\
version: 1
dataset: pizza-burn
output: out
models:
  sd-food: {{source: runwayml/stable-diffusion-v1-5, revision: 451f4fe16113bff5a5d2269ed5ad43b0592e9a14, scheduler: dpmpp_2m_karras, dtype: float16}}
defaults: {{model: sd-food, size: [512, 512], steps: 30, guidance: 7.5, seed: 1234, negative: "blurry, cartoon"}}
vars:
  lighting: {lighting}
classes:
  basic: {{target: {target}, prompt: "a photo of a raw pizza, {{lighting}}"}}
"""
LIGHTING = ["natural light", "studio light", "dim kitchen light"]


def readme_fingerprints(folder: Path, lighting: list[str], target: int = 400) -> dict[str, str]:
    path = folder / f"spec-{len(lighting)}-{target}-{abs(hash(tuple(lighting)))}.yaml"
    path.write_text(README_SPEC.format(lighting="[" + ", ".join(lighting) + "]", target=target))
    units = compile_spec(load_spec(path))["basic"]
    return {fp: units.variants[v].prompt for fp, v in zip(units.fingerprints, units.variant_of.tolist())}


def test_readme_example_moves(tmp_path: Path, capsys: Any) -> None:
    """The README's 400-unit class over 3 lighting values: what adding or removing one moves."""
    base = readme_fingerprints(tmp_path, LIGHTING)
    assert sorted(Counter(base.values()).values()) == [133, 133, 134]
    added = readme_fingerprints(tmp_path, LIGHTING + ["golden hour"])
    removed = readme_fingerprints(tmp_path, ["natural light", "studio light"])
    raised = readme_fingerprints(tmp_path, LIGHTING, target=500)
    moved_add = len(set(base) - set(added))
    moved_remove = len(set(base) - set(removed))
    own = sum(p.endswith("dim kitchen light") for p in base.values())
    with capsys.disabled():
        print(
            f"\nREADME example, 400 units over 3 lighting values: add a 4th moves {moved_add} "
            f"(minimum {400 // 4}, bound {2 * 400 / 4:.0f}); remove one moves {moved_remove} "
            f"(its own {own}, bound {own + 400 / 3:.0f}); 400 -> 500 moves {len(set(base) - set(raised))}, "
            f"adds {len(set(raised) - set(base))}"
        )
    assert moved_add == 100 and all(p.endswith("golden hour") for fp, p in added.items() if fp not in base)
    assert moved_remove == own
    assert set(base) <= set(raised) and len(raised) == 500


def test_input_images_are_a_dimension_of_the_product(tmp_path: Path) -> None:
    """img2img over 3 input images and 2 prompts: every (prompt, image) pair gets its share, and
    adding an image moves only the units the new pairs need."""
    (tmp_path / "inputs").mkdir()
    for name in "abcd":
        (tmp_path / "inputs" / f"{name}.png").write_bytes(f"image {name}".encode())
    spec = """\
version: 1
dataset: inputs
output: out
models: {{m: {{source: runwayml/stable-diffusion-v1-5, revision: abc}}}}
defaults: {{model: m, size: [64, 64], steps: 4, guidance: 5.0, seed: 1}}
classes:
  edit: {{target: 13, mode: img2img, prompt: "a {{style}} photo", vars: {{style: [warm, cold]}}, input: {{images: {images}}}}}
"""

    def pairs(images: str) -> tuple[Counter[tuple[int, str]], dict[str, tuple[int, str]]]:
        path = tmp_path / f"spec-{len(images)}.yaml"
        path.write_text(spec.format(images=images))
        units = compile_spec(load_spec(path))["edit"]
        keys = [
            (v, Path(units.inputs[i].path).name) for v, i in zip(units.variant_of.tolist(), units.input_of.tolist())
        ]
        return Counter(keys), dict(zip(units.fingerprints, keys))

    three, before = pairs('["inputs/a.png", "inputs/b.png", "inputs/c.png"]')
    assert len(three) == 6 and sorted(three.values()) == [2, 2, 2, 2, 2, 3]
    four, after = pairs('"inputs/*.png"')
    assert len(four) == 8 and sorted(four.values()) == [1, 1, 1, 2, 2, 2, 2, 2]
    gone = set(before) - set(after)
    assert len(gone) == sum(key[1] == "d.png" for key in after.values()) == 3
