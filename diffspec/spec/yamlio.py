"""YAML loading that keeps positions, refuses unsafe input and never constructs objects.

The YAML is parsed in ruamel's round-trip mode (which records line and column of every key,
value and item) and converted to plain data plus a `Positions` index from data paths to
places in the file. Custom and Python tags are errors: a spec is data, not code.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffspec.errors import Position, Problem, SpecError

PathT = tuple[str | int, ...]

_SAFE_TAGS = {
    None,
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


@dataclass
class Positions:
    """Where each data path was written: the key's place for mapping entries, the item's for lists."""

    file: str
    places: dict[PathT, tuple[int, int]] = field(default_factory=dict)
    # Paths whose values come from somewhere else (a profile, a file) map to that file.
    files: dict[PathT, str] = field(default_factory=dict)

    def at(self, path: PathT) -> Position | None:
        """The position of `path`, or of its nearest written ancestor."""
        probe = tuple(path)
        while True:
            if probe in self.places:
                line, col = self.places[probe]
                return Position(self._file_for(probe), line, col)
            if not probe:
                return Position(self.file, 1, 1)
            probe = probe[:-1]

    def _file_for(self, path: PathT) -> str:
        probe = path
        while probe:
            if probe in self.files:
                return self.files[probe]
            probe = probe[:-1]
        return self.files.get((), self.file)

    def graft(self, other: Positions, source: PathT, target: PathT) -> None:
        """Copy positions of `other` under `source` to `target` in this index (profile merges)."""
        n = len(source)
        for path, place in list(other.places.items()):
            if path[:n] == source:
                self.places[target + path[n:]] = place
                if other.file != self.file:
                    self.files[target + path[n:]] = other.file


def _tag_of(node: Any) -> str | None:
    tag = getattr(node, "tag", None)
    if tag is None:
        return None
    value = getattr(tag, "value", tag)
    return value if isinstance(value, str) else None


def _to_plain(node: Any, path: PathT, positions: Positions, problems: list[Problem]) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

    tag = _tag_of(node)
    if isinstance(node, TaggedScalar) or tag not in _SAFE_TAGS:
        problems.append(
            Problem(positions.at(path), f"tag {tag!r} is not allowed: a spec is plain data (no custom or Python tags)")
        )
        return None
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key in node:
            if not isinstance(key, str):
                line, col = node.lc.key(key)
                problems.append(Problem(Position(positions.file, line + 1, col + 1), f"keys must be strings, got {key!r}"))
                continue
            line, col = node.lc.key(key)
            positions.places[path + (key,)] = (line + 1, col + 1)
            out[key] = _to_plain(node[key], path + (key,), positions, problems)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, item in enumerate(node):
            line, col = node.lc.item(i)
            positions.places[path + (i,)] = (line + 1, col + 1)
            items.append(_to_plain(item, path + (i,), positions, problems))
        return items
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    problems.append(Problem(positions.at(path), f"unsupported YAML value {node!r} ({type(node).__name__})"))
    return None


def load_yaml_text(text: str, file: str) -> tuple[Any, Positions]:
    """Parse YAML text into plain data and positions. Raises SpecError with a position."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    positions = Positions(file=file)
    try:
        root = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Position(file, mark.line + 1, mark.column + 1) if mark else Position(file, 1, 1)
        reason = (exc.problem or "invalid YAML").strip()
        if "duplicate key" in reason:
            reason = reason.replace("found duplicate key", "duplicate key")
            reason += "; each key may appear once in a mapping"
        elif exc.context:
            reason = f"{reason} ({exc.context.strip()})"
        raise SpecError([Problem(where, f"YAML: {reason}")]) from None
    except YAMLError as exc:
        raise SpecError([Problem(Position(file, 1, 1), f"YAML: {exc}")]) from None
    problems: list[Problem] = []
    data = _to_plain(root, (), positions, problems)
    if problems:
        raise SpecError(problems)
    return data, positions


def load_yaml_file(path: Path) -> tuple[Any, Positions]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(None, f"spec file not found: {path}")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(Position(str(path), 1, 1), f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise SpecError([Problem(None, f"cannot read {path}: {exc.strerror}")]) from None
    return load_yaml_text(text, str(path))


def iter_paths(data: Any, path: PathT = ()) -> Iterator[PathT]:
    yield path
    if isinstance(data, dict):
        for key, value in data.items():
            yield from iter_paths(value, path + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from iter_paths(value, path + (i,))
