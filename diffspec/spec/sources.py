"""Value sources: what a spec reads from files beside it.

File-backed vars (TXT lines, a CSV column, a JSONL field), one class per row of
`classes_from`, input images and masks (globs, with their content hashes) and the images of
an `existing` folder. Problems are collected, not raised, so one run reports them all.
"""

from __future__ import annotations

import copy
import csv
import glob
import json
import re
from pathlib import Path
from typing import Any

from diffspec.content import default_cache
from diffspec.errors import Position, Problem
from diffspec.spec import paths
from diffspec.spec.model import ClassSpec, FileValues
from diffspec.spec.resolved import InputFile
from diffspec.spec.suggest import did_you_mean
from diffspec.spec.yamlio import PathT, Positions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VALID_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def shown_path(path: Path) -> str:
    """A path as messages show it: relative to the working folder when inside it (shorter, and
    what the user typed), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_values(fv: FileValues, root: Path, where: Position | None, problems: list[Problem]) -> tuple[str, ...]:
    checked = paths.readable_file(root, fv.file, "file", where, problems)
    if checked is None:
        return ()
    path = checked
    if not path.is_file():
        problems.append(Problem(where, f"file not found: {fv.file} (looked in {shown_path(path.parent)})"))
        return ()
    suffix = path.suffix.lower()
    values: list[str] = []
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                columns = reader.fieldnames or []
                column = fv.column or (columns[0] if columns else None)
                if column not in columns:
                    problems.append(
                        Problem(
                            where,
                            f"column {column!r} not in {fv.file}{did_you_mean(str(column), columns)} (columns: {', '.join(columns)})",
                        )
                    )
                    return ()
                values = [row[column].strip() for row in reader if row.get(column, "").strip()]
        elif suffix in (".jsonl", ".ndjson"):
            key = fv.field
            if not key:
                problems.append(Problem(where, f"{fv.file} is JSONL: say which `field` to read"))
                return ()
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.append(Problem(Position(shown_path(path), n, exc.colno), f"invalid JSON: {exc.msg}"))
                    return ()
                if not isinstance(record, dict) or key not in record:
                    problems.append(Problem(Position(shown_path(path), n, 1), f"record has no field {key!r}"))
                    return ()
                values.append(str(record[key]).strip())
        else:
            values = [
                line.strip()
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(Problem(where, f"cannot read {fv.file}: {exc}"))
        return ()
    if fv.limit is not None:
        values = values[: fv.limit]
    if not values:
        problems.append(Problem(where, f"{fv.file} holds no values"))
    return tuple(values)


def values_of(values: Any, root: Path, where: Position | None, problems: list[Problem]) -> tuple[str, ...]:
    if isinstance(values, FileValues):
        return read_values(values, root, where, problems)
    if not values:
        problems.append(Problem(where, "a variable needs at least one value"))
    return tuple("" if v is None else str(v) for v in values)


def expand_classes_from(data: dict[str, Any], positions: Positions, root: Path, problems: list[Problem]) -> list[str]:
    """Add one class per row of `classes_from.file`; returns the names of the classes made."""
    made: list[str] = []
    source = data.get("classes_from")
    if not isinstance(source, dict):
        return made
    where = positions.at(("classes_from", "file"))
    file = source.get("file")
    template = source.get("template")
    if not isinstance(file, str) or not isinstance(template, dict):
        return made  # pydantic reports the shape
    checked = paths.readable_file(root, file, "classes_from.file", where, problems)
    if checked is None:
        return made
    path = checked
    if not path.is_file():
        problems.append(Problem(where, f"file not found: {file}"))
        return made
    rows: list[dict[str, str]] = []
    name_key = source.get("name")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                rows = [dict(r) for r in csv.DictReader(fh)]
        elif path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            rows = [{"name": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            name_key = name_key or "name"
    except (OSError, ValueError, csv.Error) as exc:
        problems.append(Problem(where, f"cannot read {file}: {exc}"))
        return made
    limit = source.get("limit")
    if isinstance(limit, int):
        rows = rows[:limit]
    if not rows:
        problems.append(Problem(where, f"{file} holds no rows"))
        return made
    name_key = name_key or next(iter(rows[0]))
    columns = [str(k) for k in rows[0]] if isinstance(rows[0], dict) else []
    if isinstance(rows[0], dict) and name_key not in rows[0]:
        problems.append(
            Problem(
                positions.at(("classes_from", "name")),
                f"column {name_key!r} not in {file}{did_you_mean(str(name_key), columns)} (columns: {', '.join(columns)})",
            )
        )
        return made
    classes = data.setdefault("classes", {})
    if not isinstance(classes, dict):
        return made
    for n, row in enumerate(rows, 1):
        if name_key not in row or not str(row[name_key]).strip():
            problems.append(Problem(Position(shown_path(path), n + 1, 1), f"row has no {name_key!r}"))
            continue
        name = _slug(str(row[name_key]))
        if name in classes:
            problems.append(Problem(Position(shown_path(path), n + 1, 1), f"class {name!r} is defined twice"))
            continue
        spec = copy.deepcopy(template)
        row_vars = {_var_name(k): [str(v)] for k, v in row.items() if _var_name(k)}
        spec["vars"] = {**row_vars, **(spec.get("vars") or {})}
        spec.setdefault("label", str(row[name_key]).strip())
        classes[name] = spec
        positions.graft(positions, ("classes_from", "template"), ("classes", name))
        positions.places.setdefault(("classes", name), positions.places.get(("classes_from",), (1, 1)))
        made.append(name)
    return made


def collapse_template_problems(problems: list[Problem], made: list[str]) -> list[Problem]:
    """A mistake in the `classes_from` template shows once, not once per row of the file."""
    if len(made) < 2:
        return problems
    names = set(made)
    counts: dict[tuple[Any, str], int] = {}
    kept: dict[tuple[Any, str], Problem] = {}
    for problem in problems:
        generic = problem.message
        found = [n for n in re.findall(r"'([^']*)'", generic) if n in names]
        if problem.path.startswith("classes."):
            rest = problem.path[len("classes.") :]
            found += [
                rest[:i] for i in range(len(rest), 0, -1) if (i == len(rest) or rest[i] == ".") and rest[:i] in names
            ][:1]
        for name in found:
            generic = generic.replace(f"'{name}'", "'{class}'").replace(f"classes.{name}", "classes.{class}")
        key = (problem.position, generic if found else problem.message)
        counts[key] = counts.get(key, 0) + 1
        kept.setdefault(key, problem)
    out = []
    for key, problem in kept.items():
        more = counts[key] - 1
        out.append(
            problem
            if not more
            else Problem(
                problem.position,
                f"{problem.message} (and the same for {more} more class{'es' if more != 1 else ''} from classes_from)",
                problem.path,
            )
        )
    return out


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.\- ]+", "_", text.strip()).strip(" ._-")
    return slug[:128] or "class"


def _var_name(column: str) -> str | None:
    name = re.sub(r"\W+", "_", column.strip()).strip("_").lower()
    return name if name and VALID_VAR.match(name) else None


def sha256_file(path: Path, cache: dict[str, str]) -> str:
    key = str(path)
    if key not in cache:
        cache[key] = default_cache().file_sha256(path)  # persistent, by (path, size, mtime, ctime)
    return cache[key]


def expand_globs(
    patterns: str | list[str],
    root: Path,
    where: Position | None = None,
    problems: list[Problem] | None = None,
    output: Path | None = None,
) -> list[Path]:
    found: list[Path] = []
    problems = problems if problems is not None else []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if not paths.glob_allowed(root, pattern, "input glob", where, problems):
            continue
        matches = sorted(glob.glob(str(root / pattern), recursive=True))
        found.extend(
            paths.matches_allowed(
                root,
                [Path(m).resolve() for m in matches if Path(m).is_file()],
                output,
                "input glob",
                pattern,
                where,
                problems,
            )
        )
    return list(dict.fromkeys(found))  # each file once, in the order first found


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def resolve_inputs(
    cls: ClassSpec,
    root: Path,
    cpath: PathT,
    positions: Positions,
    problems: list[Problem],
    cache: dict[str, str],
    output: Path | None = None,
) -> tuple[InputFile, ...]:
    if cls.input is None:
        return ()
    before = len(problems)
    images = [
        p
        for p in expand_globs(cls.input.images, root, positions.at(cpath + ("input", "images")), problems, output)
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(problems) > before:
        return ()
    if not images:
        problems.append(
            Problem(
                positions.at(cpath + ("input", "images")),
                f"no image files match {cls.input.images!r} (relative to {shown_path(root)})",
            )
        )
        return ()
    masks_by_stem: dict[str, Path] = {}
    if cls.input.masks is not None:
        masks = expand_globs(cls.input.masks, root, positions.at(cpath + ("input", "masks")), problems, output)
        if len(problems) > before:
            return ()
        masks_by_stem = {m.stem: m for m in masks}
        if not masks:
            problems.append(
                Problem(positions.at(cpath + ("input", "masks")), f"no mask files match {cls.input.masks!r}")
            )
            return ()
    out = []
    for image in images:
        mask = masks_by_stem.get(image.stem) if cls.input.masks is not None else None
        if cls.input.masks is not None and mask is None:
            if len(masks_by_stem) == 1:
                mask = next(iter(masks_by_stem.values()))  # one mask for every image
            else:
                problems.append(
                    Problem(
                        positions.at(cpath + ("input", "masks")),
                        f"no mask with the stem of {image.name} (masks pair with images by file name)",
                    )
                )
                continue
        out.append(
            InputFile(
                str(image),
                sha256_file(image, cache),
                str(mask) if mask else None,
                sha256_file(mask, cache) if mask else None,
            )
        )
    return tuple(out)
