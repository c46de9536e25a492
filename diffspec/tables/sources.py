"""Where a model source lives: a built-in model, a local folder beside the spec, or a hub id.

One rule for the loader's checks and the planner's model references, so both agree on what a
source names: a local folder is made absolute (runs from any working folder agree on it), any
other source is kept as written.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_PREFIX = "builtin:"


def is_builtin(source: str) -> bool:
    return source.startswith(BUILTIN_PREFIX)


def local_folder(source: str, root: Path) -> Path | None:
    """The folder a source names, relative to the spec's folder ``root``, if one exists there."""
    if is_builtin(source):
        return None
    path = root / source
    return path.resolve() if path.is_dir() else None


def resolve_source(source: str, root: Path) -> str:
    """The source as plans and loaders see it: an existing local folder as an absolute path."""
    folder = local_folder(source, root)
    return str(folder) if folder is not None else source


def looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a local path rather than a hub id."""
    if source.startswith(("/", "./", "../", "~", ".\\")) or "\\" in source:
        return True
    if Path(source).expanduser().exists():
        return True
    # hub ids are "name" or "org/name"; more slashes mean a path
    return source.count("/") > 1
