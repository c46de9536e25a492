"""Where a spec may read and count files: the rules per key, in one place.

A spec is often someone else's (a pull request, a shared repository), and what it reads ends
up in prompts, PNG text chunks and the catalog, which get published. So:

* files whose *content* a spec reads (``vars: {file: ...}``, ``classes_from.file``, input and
  mask globs) must resolve, after following symlinks, inside the spec's folder, or inside a
  folder the person running diffspec allows with ``DIFFSPEC_ALLOW_PATHS`` (``:``-separated);
  a spec cannot grant itself access. An absolute glob or one that climbs out with ``..`` is
  refused before it is expanded, so it cannot walk the filesystem either;
* ``existing:`` only counts image files, so it may point anywhere (real data usually lives
  elsewhere), but not into the output root, nor hold it: generated images would count as real
  ones and shrink ``fill_to``'s deficit run after run;
* input images must not come from the output root: a glob that matches generated images
  changes the plan every time apply runs;
* ``output`` and model, LoRA and ControlNet sources may be absolute or outside the spec's
  folder (an output disk, a model cache); writes are confined to the output root by the
  writer, and weights are checked by diffspec.spec.weights.
* class names cannot escape: the schema's name pattern forbids ``/``, ``\\`` and a leading dot.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from diffspec.errors import Position, Problem

ALLOW_ENV = "DIFFSPEC_ALLOW_PATHS"


def allowed_roots(root: Path) -> list[Path]:
    extra = [Path(p).expanduser().resolve() for p in os.environ.get(ALLOW_ENV, "").split(os.pathsep) if p.strip()]
    return [root.resolve(), *extra]


def _inside_any(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _refusal(what: str, given: str, resolved: Path, root: Path) -> str:
    return (
        f"{what} {given!r} resolves to {resolved}, outside the spec's folder {root}: a spec reads only files "
        f"under its own folder (move or link the data there, or allow the folder with {ALLOW_ENV}=/path)"
    )


def readable_file(root: Path, given: str, what: str, where: Position | None, problems: list[Problem]) -> Path | None:
    """``root / given`` resolved if a spec may read it; else a problem and None."""
    path = (root / given).resolve()
    if not _inside_any(path, allowed_roots(root)):
        problems.append(Problem(where, _refusal(what, given, path, root.resolve())))
        return None
    if path.exists() and not path.is_file():
        problems.append(Problem(where, f"{what} {given!r} is not a regular file"))
        return None
    return path


def glob_allowed(root: Path, pattern: str, what: str, where: Position | None, problems: list[Problem]) -> bool:
    """Whether a glob may be expanded at all: not absolute, and its fixed prefix stays inside."""
    parts = PurePath(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    prefix = (root / Path(*fixed)).resolve() if fixed else root.resolve()
    if PurePath(pattern).is_absolute() or not _inside_any(prefix, allowed_roots(root)):
        problems.append(Problem(where, _refusal(what, pattern, prefix, root.resolve())))
        return False
    if ".." in parts[len(fixed) :]:
        problems.append(Problem(where, f"{what} {pattern!r}: `..` after a wildcard is not allowed"))
        return False
    return True


def matches_allowed(
    root: Path,
    matches: list[Path],
    output: Path | None,
    what: str,
    pattern: str,
    where: Position | None,
    problems: list[Problem],
) -> list[Path]:
    """Drop nothing silently: a match that a symlink leads outside, or that lies in the output
    root, is a problem."""
    roots = allowed_roots(root)
    kept = []
    for m in matches:
        if not _inside_any(m, roots):
            problems.append(Problem(where, _refusal(what, pattern, m, root.resolve())))
            return []
        if output is not None and _inside_any(m, [output]):
            problems.append(
                Problem(
                    where,
                    f"{what} {pattern!r} matches {m}, inside the output root {output}: "
                    "generated images must not feed the spec's own inputs",
                )
            )
            return []
        kept.append(m)
    return kept


def existing_problem(folder: Path, given: str, output: Path, where: Position | None) -> Problem | None:
    if _inside_any(folder, [output]) or _inside_any(output, [folder]):
        return Problem(
            where,
            f"existing {given!r} ({folder}) overlaps the output root {output}: generated images "
            "would count as existing ones; point it at the folder of real images",
        )
    return None
