"""Load a spec file: YAML with positions → profile overlay → pydantic → semantic checks → resolved spec.

Everything here reads files (the spec, var files, input images, existing folders) but never
imports torch. The result, `LoadedSpec`, is what the pure compiler consumes.
"""

from __future__ import annotations

import copy
import csv
import glob
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from diffspec.errors import Position, Problem, SpecError
from diffspec.spec import paths, weights
from diffspec.spec.errors_map import _message, problems_from_validation
from diffspec.spec.model import ClassSpec, FileValues, GenParams, Spec
from diffspec.spec.suggest import did_you_mean
from diffspec.spec.yamlio import PathT, Positions, load_yaml_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
BUILTIN_VARS = ("class", "label", "dataset")
PLACEHOLDER = re.compile(r"(?<!\{)\{([^{}]*)\}(?!\})")
VALID_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROFILE_ONLY_KEY = "only"

# Built-in generation defaults, overridden by spec defaults < model defaults < profile < class.
BUILTIN_PARAMS: dict[str, Any] = {
    "mode": "txt2img",
    "size": (512, 512),
    "steps": 30,
    "guidance": 7.5,
    "negative": "",
    "seed": 0,
    "strength": 0.75,
    "scheduler": "default",
    "scheduler_kwargs": {},
    "conditioning_scale": 1.0,
}
PARAM_KEYS = tuple(BUILTIN_PARAMS) + ("model",)


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute
    sha256: str
    mask_path: str | None = None
    mask_sha256: str | None = None


@dataclass(frozen=True)
class ResolvedClass:
    """A class with every default applied and every file read: the compiler's input."""

    name: str
    params: dict[str, Any]  # model, mode, size, steps, guidance, negative, seed, strength, scheduler, ...
    templates: tuple[str, ...]
    variables: dict[str, tuple[str, ...]]
    expand: str
    sweep: dict[str, tuple[Any, ...]]
    target: int
    seeds: tuple[int, ...] | None
    seed_key: str
    inputs: tuple[InputFile, ...]
    control: str | None
    canny: tuple[int, int]
    label: str
    description: str | None
    existing_count: int | None = None
    fill_to: int | None = None


@dataclass(frozen=True)
class LoadedSpec:
    path: Path
    spec: Spec
    profile: str | None
    root: Path  # folder of the spec file: relative paths start here
    output: Path  # absolute output root
    classes: dict[str, ResolvedClass]
    content_hash: str  # changes whenever anything that could change the plan changes
    positions: Positions = field(repr=False, compare=False)


def _read_values(fv: FileValues, root: Path, where: Position | None, problems: list[Problem]) -> tuple[str, ...]:
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
                        Problem(where, f"column {column!r} not in {fv.file}{did_you_mean(str(column), columns)} (columns: {', '.join(columns)})")
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
            values = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(Problem(where, f"cannot read {fv.file}: {exc}"))
        return ()
    if fv.limit is not None:
        values = values[: fv.limit]
    if not values:
        problems.append(Problem(where, f"{fv.file} holds no values"))
    return tuple(values)


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_profile(data: dict[str, Any], positions: Positions, profile: str | None) -> dict[str, Any]:
    profiles = data.get("profiles") or {}
    if profile is None:
        return data
    if not isinstance(profiles, dict) or profile not in profiles:
        names = list(profiles) if isinstance(profiles, dict) else []
        raise SpecError([
            Problem(positions.at(("profiles",)),
                    f"unknown profile {profile!r}{did_you_mean(profile, names)}"
                    + (f" (profiles: {', '.join(names)})" if names else " (this spec defines no profiles)"))
        ])
    overlay = profiles[profile]
    if not isinstance(overlay, dict):
        raise SpecError([Problem(positions.at(("profiles", profile)), f"profile {profile!r} must be a mapping")])
    overlay = dict(overlay)
    only = overlay.pop(PROFILE_ONLY_KEY, None)
    forbidden = [k for k in overlay if k in ("version", "dataset", "profiles")]
    if forbidden:
        raise SpecError([Problem(positions.at(("profiles", profile, forbidden[0])), f"a profile cannot change `{forbidden[0]}`")])
    merged = _deep_merge(data, overlay)
    positions.graft(positions, ("profiles", profile), ())
    if only is not None:
        classes = merged.get("classes") or {}
        wanted = [only] if isinstance(only, str) else list(only) if isinstance(only, list) else []
        missing = [c for c in wanted if c not in classes]
        if missing or not wanted:
            raise SpecError([
                Problem(positions.at(("profiles", profile, PROFILE_ONLY_KEY)),
                        f"`only` must list classes of this spec; unknown: {', '.join(map(str, missing)) or only!r}"
                        + (did_you_mean(str(missing[0]), classes) if missing else ""))
            ])
        merged["classes"] = {k: v for k, v in classes.items() if k in wanted}
    return merged


def _expand_classes_from(data: dict[str, Any], positions: Positions, root: Path, problems: list[Problem]) -> list[str]:
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
        problems.append(Problem(positions.at(("classes_from", "name")),
                                f"column {name_key!r} not in {file}{did_you_mean(str(name_key), columns)} (columns: {', '.join(columns)})"))
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


def _collapse_template_problems(problems: list[Problem], made: list[str]) -> list[Problem]:
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
            rest = problem.path[len("classes."):]
            found += [rest[:i] for i in range(len(rest), 0, -1) if (i == len(rest) or rest[i] == ".") and rest[:i] in names][:1]
        for name in found:
            generic = generic.replace(f"'{name}'", "'{class}'").replace(f"classes.{name}", "classes.{class}")
        key = (problem.position, generic if found else problem.message)
        counts[key] = counts.get(key, 0) + 1
        kept.setdefault(key, problem)
    out = []
    for key, problem in kept.items():
        more = counts[key] - 1
        out.append(problem if not more else Problem(
            problem.position, f"{problem.message} (and the same for {more} more class{'es' if more != 1 else ''} from classes_from)", problem.path))
    return out


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.\- ]+", "_", text.strip()).strip(" ._-")
    return slug[:128] or "class"


def _var_name(column: str) -> str | None:
    name = re.sub(r"\W+", "_", column.strip()).strip("_").lower()
    return name if name and VALID_VAR.match(name) else None


def placeholders(template: str) -> list[str]:
    return [m.group(1) for m in PLACEHOLDER.finditer(template)]


def _sha256_file(path: Path, cache: dict[str, str]) -> str:
    key = str(path)
    if key not in cache:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        cache[key] = digest.hexdigest()
    return cache[key]


def _expand_globs(patterns: str | list[str], root: Path, where: Position | None = None,
                  problems: list[Problem] | None = None, output: Path | None = None) -> list[Path]:
    found: list[Path] = []
    problems = problems if problems is not None else []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if not paths.glob_allowed(root, pattern, "input glob", where, problems):
            continue
        matches = sorted(glob.glob(str(root / pattern), recursive=True))
        found.extend(paths.matches_allowed(root, [Path(m).resolve() for m in matches if Path(m).is_file()],
                                           output, "input glob", pattern, where, problems))
    seen: set[Path] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _resolve_params(spec: Spec, cls: ClassSpec, cpath: PathT, positions: Positions, problems: list[Problem]) -> dict[str, Any]:
    params = dict(BUILTIN_PARAMS)
    layers: list[GenParams] = [spec.defaults]
    model_name = cls.model or spec.defaults.model
    if model_name is None and len(spec.models) == 1:
        model_name = next(iter(spec.models))
    if model_name is None:
        problems.append(Problem(positions.at(cpath), f"class {cpath[-1]!r} has no model: set defaults.model or this class's `model` (models: {', '.join(spec.models)})"))
        return {}
    if model_name not in spec.models:
        where = cpath + ("model",) if cls.model else ("defaults", "model")
        problems.append(Problem(positions.at(where), f"unknown model {model_name!r}{did_you_mean(model_name, spec.models)} (models: {', '.join(spec.models)})"))
        return {}
    model = spec.models[model_name]
    if model.scheduler:
        params["scheduler"] = model.scheduler
    if model.scheduler_kwargs:
        params["scheduler_kwargs"] = dict(model.scheduler_kwargs)
    layers.append(model.defaults)
    layers.append(cls)
    for layer in layers:
        for key in BUILTIN_PARAMS:
            value = getattr(layer, key)
            if value is not None:
                params[key] = tuple(value) if key == "size" else value
    params["model"] = model_name
    return params


def _check_templates(name: str, cls: ClassSpec, known: set[str], cpath: PathT, positions: Positions, problems: list[Problem]) -> None:
    templates = [cls.prompt] if isinstance(cls.prompt, str) else list(cls.prompt)
    if not templates:
        problems.append(Problem(positions.at(cpath + ("prompt",)), "`prompt` must hold at least one template"))
    for i, template in enumerate(templates):
        tpath = cpath + ("prompt",) + ((i,) if not isinstance(cls.prompt, str) else ())
        for var in placeholders(template):
            if var not in known:
                problems.append(Problem(
                    positions.at(tpath),
                    f"prompt of class {name!r} uses undefined variable {{{var}}}{did_you_mean(var, known)} "
                    f"(defined: {', '.join(sorted(known))})",
                ))


def _check_family_mode(spec: Spec, name: str, params: dict[str, Any], cls: ClassSpec, cpath: PathT,
                       positions: Positions, problems: list[Problem], root: Path) -> None:
    from diffspec.errors import GenerationError
    from diffspec.generate.families import check_size, check_supported, guess_family

    model_name = params["model"]
    model = spec.models[model_name]
    mode = params["mode"]
    where = positions.at(cpath + ("mode",)) if cls.mode else positions.at(cpath)
    try:
        source = model.source
        if not source.startswith("builtin:") and (root / source).is_dir():
            source = str((root / source).resolve())
        family = model.family if model.family != "auto" else guess_family(source)
    except GenerationError as exc:
        problems.append(Problem(positions.at(("models", model_name, "source")), f"model {model_name!r}: {exc}"))
        return
    try:
        check_supported(family, mode, params["scheduler"])
        check_size(family, *params["size"])
    except GenerationError as exc:
        sched_where = positions.at(cpath + ("scheduler",)) if cls.scheduler else where
        problems.append(Problem(sched_where if "scheduler" in str(exc) else where, f"class {name!r} (model {model_name!r}, {family}): {exc}"))
    if mode in ("img2img", "inpaint", "controlnet") and cls.input is None:
        problems.append(Problem(where, f"class {name!r} uses mode {mode} and needs `input: {{images: ...}}`"))
    if mode == "inpaint" and cls.input is not None and cls.input.masks is None:
        problems.append(Problem(positions.at(cpath + ("input",)), f"class {name!r} uses mode inpaint and needs `input.masks`"))
    if mode == "controlnet":
        if model.controlnet is None:
            problems.append(Problem(positions.at(("models", model_name)), f"model {model_name!r} needs `controlnet` (ControlNet weights) for class {name!r} in mode controlnet"))
        if cls.input is not None and cls.input.control is None:
            problems.append(Problem(positions.at(cpath + ("input",)), f"class {name!r} uses mode controlnet and needs `input.control` (canny, depth or image)"))


def _resolve_inputs(cls: ClassSpec, root: Path, cpath: PathT, positions: Positions, problems: list[Problem],
                    cache: dict[str, str], output: Path | None = None) -> tuple[InputFile, ...]:
    if cls.input is None:
        return ()
    before = len(problems)
    images = [p for p in _expand_globs(cls.input.images, root, positions.at(cpath + ("input", "images")), problems, output)
              if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(problems) > before:
        return ()
    if not images:
        problems.append(Problem(positions.at(cpath + ("input", "images")), f"no image files match {cls.input.images!r} (relative to {shown_path(root)})"))
        return ()
    masks_by_stem: dict[str, Path] = {}
    if cls.input.masks is not None:
        masks = _expand_globs(cls.input.masks, root, positions.at(cpath + ("input", "masks")), problems, output)
        if len(problems) > before:
            return ()
        masks_by_stem = {m.stem: m for m in masks}
        if not masks:
            problems.append(Problem(positions.at(cpath + ("input", "masks")), f"no mask files match {cls.input.masks!r}"))
            return ()
    out = []
    for image in images:
        mask = masks_by_stem.get(image.stem) if cls.input.masks is not None else None
        if cls.input.masks is not None and mask is None:
            if len(masks_by_stem) == 1:
                mask = next(iter(masks_by_stem.values()))  # one mask for every image
            else:
                problems.append(Problem(positions.at(cpath + ("input", "masks")), f"no mask with the stem of {image.name} (masks pair with images by file name)"))
                continue
        out.append(InputFile(str(image), _sha256_file(image, cache),
                             str(mask) if mask else None, _sha256_file(mask, cache) if mask else None))
    return tuple(out)


def _resolve(spec: Spec, root: Path, positions: Positions, problems: list[Problem],
             output: Path | None = None) -> dict[str, ResolvedClass]:
    hashes: dict[str, str] = {}
    global_vars: dict[str, tuple[str, ...]] = {}
    for var, values in spec.vars.items():
        global_vars[var] = _values(values, root, positions.at(("vars", var)), problems)
        if not VALID_VAR.match(var):
            problems.append(Problem(positions.at(("vars", var)), f"variable name {var!r} must be letters, digits and '_'"))
    if not spec.classes and spec.classes_from is None:  # classes_from reports its own problems
        problems.append(Problem(positions.at(("classes",)) if ("classes",) in positions.places else positions.at(()), "the spec defines no classes (add `classes:` or `classes_from:`)"))
    resolved: dict[str, ResolvedClass] = {}
    for name, cls in spec.classes.items():
        cpath: PathT = ("classes", name)
        before = len(problems)
        variables = dict(global_vars)
        for var, values in cls.vars.items():
            if not VALID_VAR.match(var):
                problems.append(Problem(positions.at(cpath + ("vars", var)), f"variable name {var!r} must be letters, digits and '_'"))
            variables[var] = _values(values, root, positions.at(cpath + ("vars", var)), problems)
        _check_templates(name, cls, set(variables) | set(BUILTIN_VARS), cpath, positions, problems)
        params = _resolve_params(spec, cls, cpath, positions, problems)
        for key, values in cls.sweep.items():
            if not values:
                problems.append(Problem(positions.at(cpath + ("sweep", key)), f"sweep `{key}` needs at least one value"))
            if key == "model":
                for value in values:
                    if value not in spec.models:
                        problems.append(Problem(positions.at(cpath + ("sweep", key)), f"unknown model {value!r} in sweep{did_you_mean(str(value), spec.models)}"))
            else:
                for i, value in enumerate(values):
                    try:
                        GenParams.model_validate({key: value})
                    except ValidationError as exc:
                        problems.append(Problem(positions.at(cpath + ("sweep", key, i)), f"sweep {_message(exc.errors()[0], key, value, True)}"))
        if params:
            _check_family_mode(spec, name, params, cls, cpath, positions, problems, root)
        existing_count = None
        target = cls.target
        if cls.fill_to is not None and cls.existing is not None:
            folder = (root / cls.existing).resolve()
            if not folder.is_dir():
                problems.append(Problem(positions.at(cpath + ("existing",)), f"folder not found: {cls.existing} (resolved to {shown_path(folder)})"))
                existing_count = 0
            elif output is not None and (overlap := paths.existing_problem(folder, cls.existing, output, positions.at(cpath + ("existing",)))):
                problems.append(overlap)
                existing_count = 0
            else:
                existing_count = count_images(folder)
            target = max(0, cls.fill_to - existing_count)
        if target is None:
            target = len(cls.seeds or ())
        if cls.seeds is not None and target > len(cls.seeds):
            count = len(cls.seeds)
            problems.append(Problem(positions.at(cpath + ("seeds",)), f"class {name!r} asks for {target} images but lists only {count} seed{'s' if count != 1 else ''}"))
        inputs = _resolve_inputs(cls, root, cpath, positions, problems, hashes, output)
        if len(problems) > before or not params:
            continue
        resolved[name] = ResolvedClass(
            name=name,
            params=params,
            templates=(cls.prompt,) if isinstance(cls.prompt, str) else tuple(cls.prompt),
            variables=variables,
            expand=cls.expand,
            sweep={k: tuple(tuple(v) if isinstance(v, list) else v for v in vs) for k, vs in cls.sweep.items()},
            target=target,
            seeds=tuple(cls.seeds) if cls.seeds is not None else None,
            seed_key=cls.seed_key or name,
            inputs=inputs,
            control=cls.input.control if cls.input else None,
            canny=(cls.input.canny_low, cls.input.canny_high) if cls.input else (100, 200),
            label=cls.label or name,
            description=cls.description,
            existing_count=existing_count,
            fill_to=cls.fill_to,
        )
    if spec.stages.captions and spec.stages.captions.trust_remote_code:
        pass  # explicit opt-in, nothing to check
    return resolved


def shown_path(path: Path) -> str:
    """A path as messages show it: relative to the working folder when inside it (shorter, and
    what the user typed), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _values(values: Any, root: Path, where: Position | None, problems: list[Problem]) -> tuple[str, ...]:
    if isinstance(values, FileValues):
        return _read_values(values, root, where, problems)
    if not values:
        problems.append(Problem(where, "a variable needs at least one value"))
    return tuple("" if v is None else str(v) for v in values)


def load_spec(path: str | Path, profile: str | None = None) -> LoadedSpec:
    """Load, validate and resolve a spec file. Raises `SpecError` listing every problem found."""
    spec_path = Path(path)
    data, positions = load_yaml_file(spec_path)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {_yaml_kind(data)}"
        raise SpecError([Problem(positions.at(()), f"a spec must be a mapping of keys (version, dataset, models, classes, ...), got {got}")])
    root = spec_path.resolve().parent
    data = _apply_profile(data, positions, profile)
    problems: list[Problem] = []
    made = _expand_classes_from(data, positions, root, problems)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_collapse_template_problems(problems + problems_from_validation(exc, data, positions, Spec), made)) from None
    output = (root / spec.output).resolve()
    classes = _resolve(spec, root, positions, problems, output)
    problems.extend(weights.model_problems(spec, root, positions))
    if problems:
        raise SpecError(_collapse_template_problems(problems, made))
    if output == root or root.is_relative_to(output):
        raise SpecError([Problem(positions.at(("output",)), f"output {spec.output!r} would hold the spec's own folder; choose a subfolder such as data/{spec.dataset}")])
    content = {
        "spec": spec.model_dump(mode="json", exclude={"profiles"}),
        "profile": profile,
        "classes": {n: {"target": c.target, "variables": c.variables, "inputs": [[i.sha256, i.mask_sha256] for i in c.inputs]} for n, c in classes.items()},
    }
    content_hash = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return LoadedSpec(spec_path, spec, profile, root, output, classes, content_hash, positions)


def spec_files(targets: list[str | Path]) -> list[Path]:
    """Spec files named directly, or every *.yaml / *.yml inside named folders."""
    files: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            files.append(path)
    return files
