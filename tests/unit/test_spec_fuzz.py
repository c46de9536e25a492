"""Whatever text a spec file holds, `load_spec` either succeeds or raises a SpecError whose every
problem has a position (file, line, column): never another exception, never a problem
that cannot be found in the file."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffspec.errors import SpecError
from diffspec.spec.loader import load_spec

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {p.name: p.read_text(encoding="utf-8") for p in sorted((REPO / "specs").glob("*.yaml"))}
PROFILE_NAMES = ["fast", "tiny", "large", "preview", "turbo", "small_diverse", "progression_heavy", "burn_patterns"]
NUMBER = re.compile(r"(?<![\w.])-?\d+(\.\d+)?(?![\w.])")
UNICODE = st.characters(blacklist_categories=("Cs",))
_counter = iter(range(10**9))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of specs/ so mutated specs find their assets and data files (and write nothing)."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "specs", root / "specs")
    return root / "specs"


def _mutate(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(
            st.sampled_from(["delete", "duplicate", "swap", "number", "unicode", "truncate", "indent", "replace_token"])
        )
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "number":
            replacement = draw(
                st.sampled_from(
                    [
                        '"7"',
                        "-3",
                        "-0.5",
                        "0",
                        "1e400",
                        "99999999999999999999999",
                        "nan",
                        "true",
                        "null",
                        "[1]",
                        "{a: 1}",
                        "''",
                    ]
                )
            )
            lines[i] = NUMBER.sub(replacement, lines[i], count=1)
        elif kind == "unicode":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.text(UNICODE, min_size=1, max_size=6)) + lines[i][pos:]
        elif kind == "truncate":
            joined = "\n".join(lines)
            return joined[: draw(st.integers(0, len(joined)))]
        elif kind == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "\t", "    "])) + lines[i].lstrip(" ")
        else:
            token = draw(
                st.sampled_from(
                    [
                        ": ",
                        "- ",
                        "{",
                        "}",
                        "[",
                        "]",
                        ",",
                        "&a ",
                        "*a",
                        "!!python/name:os.system ",
                        "!tag ",
                        "? ",
                        "|",
                        ">",
                        "%",
                        "@",
                        "`",
                        "'",
                        '"',
                        "#",
                        "<<: *a",
                        "{class}",
                        "{nope}",
                        "../",
                    ]
                )
            )
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + token + lines[i][pos:]
    return "\n".join(lines) + "\n"


@st.composite
def spec_texts(draw: st.DrawFn) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "random_yaml", "random_unicode", "random_bytes"]))
    if kind == "mutated":
        text = _mutate(draw, SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    elif kind == "random_yaml":
        pieces = st.sampled_from(
            [
                "version: 1\n",
                "dataset: x\n",
                "models:\n",
                "  m: {source: builtin:digits}\n",
                "classes:\n",
                "  a: {target: 3, prompt: p}\n",
                "  - ",
                "a: ",
                "[",
                "]",
                "{",
                "}",
                ": ",
                "\n",
                "  ",
                "-1",
                "1.5",
                "null",
                "~",
                "&x ",
                "*x",
                "!!str ",
                "!!binary ",
                "!!set ",
                "!!omap ",
                "!!timestamp 2020-01-01",
                "'",
                '"',
                "---\n",
                "...\n",
            ]
        )
        text = "".join(draw(st.lists(pieces, max_size=40)))
    elif kind == "random_unicode":
        text = draw(st.text(UNICODE, max_size=200))
    else:
        return draw(st.binary(max_size=200)), None
    profile = draw(st.sampled_from(PROFILE_NAMES)) if draw(st.integers(0, 4)) == 0 else None
    return text.encode("utf-8", errors="surrogatepass"), profile


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(case=spec_texts())
def test_load_spec_on_any_text_succeeds_or_reports_positions(workdir: Path, case: tuple[bytes, str | None]) -> None:
    content, profile = case
    path = workdir / f"fuzz-{next(_counter)}.yaml"
    path.write_bytes(content)
    started = time.monotonic()
    try:
        load_spec(path, profile=profile)
    except SpecError as exc:
        assert exc.problems, "a SpecError must say what is wrong"
        for problem in exc.problems:
            assert problem.position is not None, f"problem without a position: {problem}"
            assert problem.position.file and problem.position.line >= 1 and problem.position.column >= 1, str(problem)
            assert problem.message.strip()
    finally:
        path.unlink()
    assert time.monotonic() - started < 5, "loading a small spec must be fast"
