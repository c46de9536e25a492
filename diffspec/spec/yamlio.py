"""YAML loading that keeps positions, refuses unsafe input and never constructs objects.

The YAML is parsed in ruamel's round-trip mode (which records line and column of every key,
value and item) and converted to plain data plus a `Positions` index from data paths to
places in the file. Custom and Python tags are errors: a spec is data, not code.
"""

from __future__ import annotations

import io
import math
import re
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


# Aliases are expanded into plain data: cap the result so that nested aliases ("billion
# laughs") cannot exhaust memory.
MAX_NODES = 200_000


def _to_plain(
    node: Any, path: PathT, positions: Positions, problems: list[Problem], budget: list[int] | None = None
) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] == -1:
        problems.append(
            Problem(positions.at(path), f"the spec expands to more than {MAX_NODES} values (nested aliases?)")
        )
    if budget[0] < 0:
        return None
    tag = _tag_of(node)
    if isinstance(node, TaggedScalar) or tag not in _SAFE_TAGS:
        problems.append(
            Problem(
                positions.at(path),
                f"tag {_shown_tag(tag)!r} is not allowed: a spec is plain data (no custom or Python tags)",
            )
        )
        return None
    if not path and isinstance(node, (CommentedMap, CommentedSeq)) and node.lc.line is not None:
        # Problems of the whole spec (a missing top-level key) point at where it starts, not line 1.
        positions.places.setdefault((), (node.lc.line + 1, node.lc.col + 1))
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key in node:
            # Keys merged in with `<<: *anchor` have no place of their own here: use the mapping's.
            line, col = node.lc.data.get(key, (node.lc.line or 0, node.lc.col or 0))[:2]
            if not isinstance(key, str):
                problems.append(
                    Problem(Position(positions.file, line + 1, col + 1), f"keys must be strings, got {key!r}")
                )
                continue
            positions.places[path + (key,)] = (line + 1, col + 1)
            out[key] = _to_plain(node[key], path + (key,), positions, problems, budget)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, item in enumerate(node):
            line, col = node.lc.item(i)
            positions.places[path + (i,)] = (line + 1, col + 1)
            items.append(_to_plain(item, path + (i,), positions, problems, budget))
        return items
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        if not math.isfinite(node):
            problems.append(
                Problem(positions.at(path), f"numbers must be finite, got {node!r} (.nan and .inf are not allowed)")
            )
            return None
        return float(node)
    problems.append(
        Problem(
            positions.at(path), f"unsupported YAML value {node!r} ({type(node).__name__}); quote it if you mean text"
        )
    )
    return None


def load_yaml_text(text: str, file: str) -> tuple[Any, Positions]:
    """Parse YAML text into plain data and positions. Raises SpecError with a position."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.reader import ReaderError

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
            # ruamel adds both values, which for a mapping can be long: the key is what matters.
            match = re.match(r'found duplicate key (".*?") with value', reason)
            reason = (
                f"duplicate key {match.group(1)}" if match else reason.replace("found duplicate key", "duplicate key")
            )
            reason += "; each key may appear once in a mapping"
        elif exc.context:
            started = exc.context_mark
            if started is not None and exc.problem_mark is not None and started.line != exc.problem_mark.line:
                reason = f"{reason} ({exc.context.strip()} that starts at line {started.line + 1}, column {started.column + 1})"
            else:
                reason = f"{reason} ({exc.context.strip()})"
        raise SpecError([Problem(where, f"YAML: {reason}")]) from None
    except ReaderError as exc:
        where = _offset_position(text, exc.position, file)
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        code = f"U+{ord(char):04X}" if len(char) == 1 else "?"
        raise SpecError(
            [
                Problem(
                    where,
                    f"YAML: unacceptable character {char!r} ({code}): control and special characters are not allowed",
                )
            ]
        ) from None
    except YAMLError as exc:
        raise SpecError([Problem(Position(file, 1, 1), "YAML: " + " ".join(str(exc).split()))]) from None
    except Exception as exc:  # ruamel fails with plain Python errors on some malformed input (e.g. `!!set x`)
        bad = _first_bad_tag(yaml, text, file)
        if bad is not None:
            raise SpecError(
                [
                    Problem(
                        bad[0],
                        f"tag {_shown_tag(bad[1])!r} is not allowed: a spec is plain data (no custom or Python tags)",
                    )
                ]
            ) from None
        raise SpecError(
            [
                Problem(
                    Position(file, 1, 1),
                    f"YAML: cannot read this document ({type(exc).__name__}: {exc}); "
                    "a spec is plain mappings, lists and scalars",
                )
            ]
        ) from None
    problems: list[Problem] = []
    data = _to_plain(root, (), positions, problems)
    if problems:
        raise SpecError(problems)
    return data, positions


def _offset_position(text: str, offset: int, file: str) -> Position:
    before = text[: max(0, offset)]
    return Position(file, before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1)


def _shown_tag(tag: str | None) -> str | None:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag and tag.startswith("tag:yaml.org,2002:") else tag


def _first_bad_tag(yaml: Any, text: str, file: str) -> tuple[Position, str | None] | None:
    """Where the first node with a tag a spec does not allow starts (best effort)."""
    try:
        stack = [yaml.compose(io.StringIO(text))]
    except Exception:
        return None
    allowed = _SAFE_TAGS | {"tag:yaml.org,2002:merge", "tag:yaml.org,2002:timestamp"}
    while stack:
        node = stack.pop()
        if node is None:
            continue
        if _tag_of(node) not in allowed:
            return Position(file, node.start_mark.line + 1, node.start_mark.column + 1), _tag_of(node)
        if isinstance(node.value, list):
            for item in reversed(node.value):
                stack.extend(reversed(item) if isinstance(item, tuple) else [item])
    return None


MAX_SPEC_BYTES = 16 * 1024 * 1024  # a spec is text someone wrote; this bounds memory and time


def _read_spec_text(path: Path) -> str:
    """The file's text, refusing what is not a regular file (a folder, /dev/zero, a FIFO)
    and anything bigger than MAX_SPEC_BYTES, before reading it."""
    import stat

    st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        raise SpecError([Problem(None, f"{path} is a folder, not a spec file")])
    if not stat.S_ISREG(st.st_mode):
        raise SpecError([Problem(None, f"{path} is not a regular file (a device, pipe or socket), not a spec file")])
    with path.open("rb") as fh:
        data = fh.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([Problem(None, f"{path} is larger than {MAX_SPEC_BYTES // (1024 * 1024)} MB: not a spec file")])
    return data.decode("utf-8")


def load_yaml_file(path: Path) -> tuple[Any, Positions]:
    try:
        text = _read_spec_text(path)
    except FileNotFoundError:
        raise SpecError([Problem(None, f"spec file not found: {path}")]) from None
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start]
        where = Position(str(path), before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1)
        raise SpecError([Problem(where, f"not UTF-8 text: {exc.reason} (byte {exc.object[exc.start]:#04x})")]) from None
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
