"""Turn pydantic's validation errors into problems with file positions and teaching messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from diffspec.errors import Problem
from diffspec.spec.suggest import did_you_mean
from diffspec.spec.yamlio import PathT, Positions

_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "tuple_type": "a list",
}


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[PathT, Any, bool]:
    """Follow a pydantic `loc` through the data; union branch names in `loc` are skipped.

    Returns the data path, the value there, and whether the whole loc was found in the data."""
    path: list[str | int] = []
    node = data
    found = True
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(part, str) and ("[" in part or part[:1].isupper() or part.startswith("function")):
            continue  # a union branch or validator name, not a data key
        else:
            found = False
            path.append(part)
            node = None
    return tuple(path), node, found


def _key_name(path: PathT) -> str:
    """How a message names the place: `steps`, or `filters[0]` for a list item."""
    if not path:
        return "spec"
    last = path[-1]
    if isinstance(last, int):
        return f"{_key_name(path[:-1])}[{last}]"
    return str(last)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_fields_at(model: type[BaseModel], path: PathT) -> list[str]:
    """Known field names of the model that validates the mapping at `path` (best effort)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        if part in fields:
            current = _unwrap(fields[part].annotation)
        else:
            # dict[str, Model]: a user-chosen key (a class or model name)
            continue
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _unwrap(annotation: Any) -> Any:
    from typing import get_args, get_origin

    origin = get_origin(annotation)
    if origin is None:
        return annotation
    for arg in get_args(annotation):
        inner = _unwrap(arg)
        if getattr(inner, "model_fields", None) is not None:
            return inner
    return annotation


def _message(error: Mapping[str, Any], key: str, value: Any, found: bool) -> str:
    kind = error["type"]
    msg: str = error["msg"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"missing required key `{key}`"
    if kind in _TYPE_WORDS:
        return f"`{key}` must be {_TYPE_WORDS[kind]}, got {_show(value)}"
    if kind == "greater_than_equal":
        return f"`{key}` must be ≥ {ctx.get('ge')}, got {_show(value)}"
    if kind == "greater_than":
        return f"`{key}` must be > {ctx.get('gt')}, got {_show(value)}"
    if kind == "less_than_equal":
        return f"`{key}` must be ≤ {ctx.get('le')}, got {_show(value)}"
    if kind == "less_than":
        return f"`{key}` must be < {ctx.get('lt')}, got {_show(value)}"
    if kind == "literal_error":
        return f"`{key}` must be {ctx.get('expected')}, got {_show(value)}"
    if kind in ("too_short", "too_long"):
        msg = msg.replace(" after validation", "")
        return f"`{key}` {msg[0].lower()}{msg[1:]}, got {_show(value)}"
    if kind == "value_error":
        text = msg.removeprefix("Value error, ")
        return f"`{key}`: {text}"
    if kind == "assertion_error":
        return f"`{key}`: {msg.removeprefix('Assertion failed, ')}"
    text = msg.replace("Input should", "should")
    return f"`{key}` {text[0].lower()}{text[1:]}" + (f", got {_show(value)}" if found else "")


def problems_from_validation(
    exc: ValidationError, data: Any, positions: Positions, model: type[BaseModel], prefix: PathT = ()
) -> list[Problem]:
    """One problem per distinct (path, message); union branches at one path are merged."""
    by_path: dict[PathT, list[str]] = {}
    order: list[PathT] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        path, value, found = _data_path(loc, data)
        if error["type"] == "missing" and not found and path and isinstance(path[-1], int):
            # A fixed-length list (e.g. size: [512]) is one item short: report it at the list.
            path, value, _ = _data_path(loc[:-1], data)
            text = f"`{_key_name(path)}` has too few items (item {int(loc[-1]) + 1} is missing), got {_show(value)}"
        elif error["type"] == "extra_forbidden":
            key = str(path[-1]) if path else "spec"
            known = _model_fields_at(model, path[:-1])
            text = f"unknown key `{key}`{did_you_mean(key, known)}"
            if known and not did_you_mean(key, known):
                text += f" (expected one of: {', '.join(known)})"
        else:
            text = _message(error, _key_name(path), value, found)
        full = prefix + path
        if full not in by_path:
            by_path[full] = []
            order.append(full)
        if text not in by_path[full]:
            by_path[full].append(text)
    problems = []
    for full in order:
        texts = by_path[full]
        if len(texts) > 1:
            key = _key_name(full)
            text = f"`{key}` matches none of the allowed forms: " + "; or ".join(
                t.replace(f"`{key}` ", "") for t in texts
            )
        else:
            text = texts[0]
        where = ".".join(str(p) for p in full)
        problems.append(Problem(positions.at(full), text + (f"  [at {where}]" if where else ""), path=where))
    return problems
