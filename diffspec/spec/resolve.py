"""Resolution: semantic checks of a validated spec and the layering of its parameters.

Parameters layer as built-in (`Defaults`) < spec `defaults` < model `defaults` < class; a
model's own `scheduler` / `scheduler_kwargs` sit just above the built-ins. Every problem is
collected with its position, so one run reports them all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from diffspec.errors import GenerationError, Problem, StageError
from diffspec.spec import paths
from diffspec.spec.availability import check_available
from diffspec.spec.errors_map import _message
from diffspec.spec.instruction import render_instruction
from diffspec.spec.model import PARAM_NAMES, ClassSpec, Defaults, GenParams, Spec
from diffspec.spec.resolved import ResolvedClass, ResolvedParams
from diffspec.spec.sources import (
    VALID_VAR,
    count_images,
    resolve_inputs,
    shown_path,
    values_of,
)
from diffspec.spec.suggest import did_you_mean
from diffspec.spec.yamlio import PathT, Positions
from diffspec.tables.families import check_size, check_supported, resolve_family
from diffspec.tables.sources import local_folder, looks_like_path, resolve_source
from diffspec.tables.speed import family_problems, mode_problem

BUILTIN_VARS = ("class", "label", "dataset")
PLACEHOLDER = re.compile(r"(?<!\{)\{([^{}]*)\}(?!\})")


def placeholders(template: str) -> list[str]:
    return [m.group(1) for m in PLACEHOLDER.finditer(template)]


def _set(layer: GenParams, key: str) -> bool:
    """Whether a layer gives `key` a value: written in the spec, and not null (null inherits)."""
    return key in layer.model_fields_set and getattr(layer, key) is not None


def resolve_params(spec: Spec, cls: ClassSpec, model_name: str) -> ResolvedParams:
    """Layer the parameters of `cls` run with model `model_name` (which must exist)."""
    builtins = Defaults()
    values: dict[str, Any] = {key: getattr(builtins, key) for key in PARAM_NAMES if key != "model"}
    model = spec.models[model_name]
    if model.scheduler:
        values["scheduler"] = model.scheduler
    if model.scheduler_kwargs:
        values["scheduler_kwargs"] = dict(model.scheduler_kwargs)
    for layer in (spec.defaults, model.defaults, cls):
        for key in values:
            if _set(layer, key):
                values[key] = getattr(layer, key)
    width, height = values.pop("size")
    kwargs = tuple(values.pop("scheduler_kwargs").items())
    return ResolvedParams(model=model_name, size=(int(width), int(height)), scheduler_kwargs=kwargs, **values)


def _class_model(
    spec: Spec,
    cls: ClassSpec,
    cpath: PathT,
    positions: Positions,
    problems: list[Problem],
    broken_models: frozenset[str],
) -> str | None:
    """The model a class runs with, or None after reporting why there is none."""
    model_name = cls.model or spec.defaults.model
    if model_name is None and len(spec.models) + len(broken_models) == 1:
        model_name = next(iter(spec.models), None)
    if model_name is None:
        if not broken_models:
            names = ", ".join(spec.models)
            problems.append(
                Problem(
                    positions.at(cpath),
                    f"class {cpath[-1]!r} has no model: set defaults.model or this class's `model` (models: {names})",
                )
            )
        return None
    if model_name in broken_models:
        return None  # its own problems are reported where it is defined
    if model_name not in spec.models:
        known = sorted(set(spec.models) | broken_models)
        where = cpath + ("model",) if cls.model else ("defaults", "model")
        problems.append(
            Problem(
                positions.at(where),
                f"unknown model {model_name!r}{did_you_mean(model_name, known)} (models: {', '.join(known)})",
            )
        )
        return None
    return model_name


def check_models(spec: Spec, root: Path, positions: Positions, problems: list[Problem]) -> None:
    """What a model entry may not say, though each key is valid on its own."""
    for name, model in spec.models.items():
        mpath: PathT = ("models", name)
        if model.defaults.model is not None:
            problems.append(
                Problem(
                    positions.at(mpath + ("defaults", "model")),
                    f"model {name!r}: its `defaults` cannot choose a model; set `model` in a class or in the spec's `defaults`",
                )
            )
        speed = model.speed
        if speed.attention is not None or speed.cache is not None:
            try:
                family = resolve_family(resolve_source(model.source, root), model.family)
            except GenerationError:
                family = None  # reported with the model's source by check_family_mode
            for key, message in (
                family_problems(family, speed.attention, speed.cache.kind if speed.cache else None) if family else ()
            ):
                problems.append(Problem(positions.at(mpath + ("speed", key)), f"model {name!r}: {message}"))
        folder = local_folder(model.source, root)
        if model.revision is not None and folder is not None:
            problems.append(
                Problem(
                    positions.at(mpath + ("revision",)),
                    f"model {name!r}: `revision` applies to hub ids only, and {model.source!r} is a local folder "
                    f"({shown_path(folder)}), which is identified by its content; remove `revision`",
                )
            )


SEGMENT_TEXT_VARS = ("class", "label")
#: A class prompt's placeholder for its captions (made by the captions stage before its images).
CAPTION_VAR = "caption"


def check_captions_stage(spec: Spec, root: Path, positions: Positions, problems: list[Problem]) -> None:
    """The captions stage's text names only the class; its instruction has {text}; a local
    folder has no revision."""
    stage = spec.stages.captions
    if stage is None:
        return
    where: PathT = ("stages", "captions")
    for var in placeholders(stage.text):
        if var not in SEGMENT_TEXT_VARS:
            problems.append(
                Problem(
                    positions.at(where + ("text",)),
                    f"captions `text` uses {{{var}}}; it can use {{class}} and {{label}} only",
                )
            )
    try:
        render_instruction(stage.instruction, "x")
    except StageError as exc:
        problems.append(Problem(positions.at(where + ("instruction",)), str(exc)))
    if stage.revision is not None and (folder := local_folder(stage.model, root)) is not None:
        problems.append(
            Problem(
                positions.at(where + ("revision",)),
                f"captions `revision` applies to hub ids only, and {stage.model!r} is a local folder "
                f"({shown_path(folder)}), which is identified by its content; remove it",
            )
        )
    users = [n for n, c in spec.classes.items() if any(CAPTION_VAR in placeholders(t) for t in _templates(c))]
    template = spec.classes_from.template if spec.classes_from is not None else None
    if template is not None and any(CAPTION_VAR in placeholders(t) for t in _templates(template)):
        users.append("classes_from")
    if not users:
        problems.append(
            Problem(
                positions.at(where),
                "the captions stage makes captions no class uses: put {caption} in a class prompt "
                "(an image per caption), or remove the stage",
            )
        )


def _templates(cls: Any) -> list[str]:
    prompt = cls.get("prompt") if isinstance(cls, dict) else getattr(cls, "prompt", None)
    if prompt is None:
        return []
    return [prompt] if isinstance(prompt, str) else list(prompt)


def check_segment_stage(spec: Spec, root: Path, positions: Positions, problems: list[Problem]) -> None:
    """The segment stage's text may name only the class, and a local folder has no revision."""
    stage = spec.stages.segment
    if stage is None:
        return
    where: PathT = ("stages", "segment")
    for var in placeholders(stage.text):
        if var not in SEGMENT_TEXT_VARS:
            problems.append(
                Problem(
                    positions.at(where + ("text",)),
                    f"segment `text` uses {{{var}}}; it can use {{class}} and {{label}} only "
                    "(what to find is named per class, not per prompt variant)",
                )
            )
    for model_key, revision_key in (("detector", "detector_revision"), ("segmenter", "segmenter_revision")):
        folder = local_folder(getattr(stage, model_key), root)
        if getattr(stage, revision_key) is not None and folder is not None:
            problems.append(
                Problem(
                    positions.at(where + (revision_key,)),
                    f"segment `{revision_key}` applies to hub ids only, and {getattr(stage, model_key)!r} is a "
                    f"local folder ({shown_path(folder)}), which is identified by its content; remove it",
                )
            )


def check_filters_stage(spec: Spec, root: Path, positions: Positions, problems: list[Problem]) -> None:
    """A filter's model must be there to load: a path that is no folder, or a revision on a
    folder, is an error now, not after the images are made."""
    for i, entry in enumerate(spec.stages.filters):
        if entry.classifier is not None:
            _check_classifier(spec, i, positions, problems)
        if entry.clip_score is None:
            continue
        where: PathT = ("stages", "filters", i, "clip_score")
        model = entry.clip_score.model
        folder = local_folder(model, root)
        if folder is None and looks_like_path(model):
            problems.append(
                Problem(
                    positions.at(where + ("model",)),
                    f"clip_score `model` {model!r} looks like a folder, and there is none at "
                    f"{shown_path((root / model).resolve())}; use a hub id (openai/clip-vit-base-patch32) "
                    "or a folder made with `save_pretrained`",
                )
            )
        elif folder is not None and entry.clip_score.revision is not None:
            problems.append(
                Problem(
                    positions.at(where + ("revision",)),
                    f"clip_score `revision` applies to hub ids only, and {model!r} is a local folder "
                    f"({shown_path(folder)}), which is identified by its content; remove it",
                )
            )


def _check_classifier(spec: Spec, index: int, positions: Positions, problems: list[Problem]) -> None:
    """The digits classifier judges digits: on another model's images it would reject them all."""
    for name, cls in spec.classes.items():
        models = [str(m) for m in cls.sweep.get("model", ())] or [cls.model or spec.defaults.model or ""]
        others = [m for m in models if m in spec.models and spec.models[m].source != "builtin:digits"]
        if others:
            problems.append(
                Problem(
                    positions.at(("stages", "filters", index, "classifier")),
                    f"the classifier filter recognises the digits of builtin:digits, and class {name!r} uses "
                    f"{others[0]!r} ({spec.models[others[0]].source}); use clip_score for other models",
                )
            )
            return


def check_templates(
    name: str, cls: ClassSpec, known: set[str], cpath: PathT, positions: Positions, problems: list[Problem]
) -> None:
    templates = [cls.prompt] if isinstance(cls.prompt, str) else list(cls.prompt)
    if not templates:
        problems.append(Problem(positions.at(cpath + ("prompt",)), "`prompt` must hold at least one template"))
    for i, template in enumerate(templates):
        tpath = cpath + ("prompt",) + ((i,) if not isinstance(cls.prompt, str) else ())
        for var in placeholders(template):
            if var == CAPTION_VAR and var not in known:
                problems.append(
                    Problem(
                        positions.at(tpath),
                        f"prompt of class {name!r} uses {{caption}}, which needs the captions stage: "
                        "add `stages: {captions: {...}}` (docs/stages.md)",
                    )
                )
            elif var not in known:
                problems.append(
                    Problem(
                        positions.at(tpath),
                        f"prompt of class {name!r} uses undefined variable {{{var}}}{did_you_mean(var, known)} "
                        f"(defined: {', '.join(sorted(known))})",
                    )
                )


def check_family_mode(
    spec: Spec,
    name: str,
    params: ResolvedParams,
    cls: ClassSpec,
    cpath: PathT,
    positions: Positions,
    problems: list[Problem],
    root: Path,
) -> None:
    model_name = params.model
    model = spec.models[model_name]
    mode = params.mode
    where = positions.at(cpath + ("mode",)) if cls.mode else positions.at(cpath)
    try:
        family = resolve_family(resolve_source(model.source, root), model.family)
    except GenerationError as exc:
        problems.append(Problem(positions.at(("models", model_name, "source")), f"model {model_name!r}: {exc}"))
        return
    try:
        check_supported(family, mode, params.scheduler)
        check_size(family, *params.size)
    except GenerationError as exc:
        sched_where = positions.at(cpath + ("scheduler",)) if cls.scheduler else where
        problems.append(
            Problem(
                sched_where if "scheduler" in str(exc) else where,
                f"class {name!r} (model {model_name!r}, {family}): {exc}",
            )
        )
    cache = model.speed.cache
    if cache is not None and (why := mode_problem(cache.kind, mode)) is not None:
        problems.append(Problem(where, f"class {name!r} (model {model_name!r}): {why}"))
    if mode in ("img2img", "inpaint", "controlnet") and cls.input is None:
        problems.append(Problem(where, f"class {name!r} uses mode {mode} and needs `input: {{images: ...}}`"))
    if mode == "inpaint" and cls.input is not None and cls.input.masks is None:
        problems.append(
            Problem(positions.at(cpath + ("input",)), f"class {name!r} uses mode inpaint and needs `input.masks`")
        )
    if mode == "controlnet":
        if model.controlnet is None:
            problems.append(
                Problem(
                    positions.at(("models", model_name)),
                    f"model {model_name!r} needs `controlnet` (ControlNet weights) for class {name!r} in mode controlnet",
                )
            )
        if cls.input is not None and cls.input.control is None:
            problems.append(
                Problem(
                    positions.at(cpath + ("input",)),
                    f"class {name!r} uses mode controlnet and needs `input.control` (canny, depth or image)",
                )
            )


def resolve(
    spec: Spec,
    root: Path,
    positions: Positions,
    problems: list[Problem],
    broken_models: frozenset[str] = frozenset(),
    output: Path | None = None,
) -> dict[str, ResolvedClass]:
    """Check what pydantic cannot and resolve every class; problems are appended, not raised.

    `broken_models` are models that failed validation (when checking a partly valid spec):
    references to them are not reported again as unknown."""
    hashes: dict[str, str] = {}
    check_models(spec, root, positions, problems)
    check_segment_stage(spec, root, positions, problems)
    check_filters_stage(spec, root, positions, problems)
    check_captions_stage(spec, root, positions, problems)
    check_available(spec, positions, problems)
    global_vars: dict[str, tuple[str, ...]] = {}
    for var, values in spec.vars.items():
        global_vars[var] = values_of(values, root, positions.at(("vars", var)), problems)
        if not VALID_VAR.match(var):
            problems.append(
                Problem(positions.at(("vars", var)), f"variable name {var!r} must be letters, digits and '_'")
            )
    if not spec.classes and spec.classes_from is None:  # classes_from reports its own problems
        problems.append(
            Problem(
                positions.at(("classes",)) if ("classes",) in positions.places else positions.at(()),
                "the spec defines no classes (add `classes:` or `classes_from:`)",
            )
        )
    resolved: dict[str, ResolvedClass] = {}
    for name, cls in spec.classes.items():
        cpath: PathT = ("classes", name)
        before = len(problems)
        variables = dict(global_vars)
        for var, values in cls.vars.items():
            if not VALID_VAR.match(var):
                problems.append(
                    Problem(
                        positions.at(cpath + ("vars", var)), f"variable name {var!r} must be letters, digits and '_'"
                    )
                )
            variables[var] = values_of(values, root, positions.at(cpath + ("vars", var)), problems)
        caption_var = {CAPTION_VAR} if spec.stages.captions is not None else set()
        check_templates(name, cls, set(variables) | set(BUILTIN_VARS) | caption_var, cpath, positions, problems)
        model_name = _class_model(spec, cls, cpath, positions, problems, broken_models)
        params = resolve_params(spec, cls, model_name) if model_name else None
        model_params: dict[str, ResolvedParams] = {}
        for key, values in cls.sweep.items():
            if not values:
                problems.append(
                    Problem(positions.at(cpath + ("sweep", key)), f"sweep `{key}` needs at least one value")
                )
            if key == "model":
                for value in values:
                    if isinstance(value, str) and value in spec.models:
                        model_params[value] = resolve_params(spec, cls, value)
                    elif not (isinstance(value, str) and value in broken_models):
                        known = sorted(set(spec.models) | broken_models)
                        problems.append(
                            Problem(
                                positions.at(cpath + ("sweep", key)),
                                f"unknown model {value!r} in sweep{did_you_mean(str(value), known)}",
                            )
                        )
            else:
                for i, value in enumerate(values):
                    try:
                        GenParams.model_validate({key: value})
                    except ValidationError as exc:
                        problems.append(
                            Problem(
                                positions.at(cpath + ("sweep", key, i)),
                                f"sweep {_message(exc.errors()[0], key, value, True)}",
                            )
                        )
        # Each swept model is checked with its own parameters, as it will run.
        for checked in ([params] if params else []) + [
            p for m, p in model_params.items() if params is None or m != params.model
        ]:
            check_family_mode(spec, name, checked, cls, cpath, positions, problems, root)
        existing_count = None
        existing_folder = None
        target = cls.target
        if cls.existing is not None:
            folder = (root / cls.existing).resolve()
            if not folder.is_dir():
                problems.append(
                    Problem(
                        positions.at(cpath + ("existing",)),
                        f"folder not found: {cls.existing} (resolved to {shown_path(folder)})",
                    )
                )
                existing_count = 0
            elif output is not None and (
                overlap := paths.existing_problem(folder, cls.existing, output, positions.at(cpath + ("existing",)))
            ):
                problems.append(overlap)
                existing_count = 0
            else:
                existing_folder = str(folder)
                existing_count = count_images(folder) if cls.fill_to is not None else None
            if cls.fill_to is not None:
                target = max(0, cls.fill_to - (existing_count or 0))
        if target is None:
            target = len(cls.seeds or ())
        if cls.seeds is not None and target > len(cls.seeds):
            count = len(cls.seeds)
            problems.append(
                Problem(
                    positions.at(cpath + ("seeds",)),
                    f"class {name!r} asks for {target} images but lists only {count} seed{'s' if count != 1 else ''}",
                )
            )
        inputs = resolve_inputs(cls, root, cpath, positions, problems, hashes, output)
        if (
            len(problems) > before
            or params is None
            or not all(isinstance(m, str) and m in model_params for m in cls.sweep.get("model", ()))
        ):
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
            existing_folder=existing_folder,
            replace_rejected=spec.stages.replace_rejected if cls.replace_rejected is None else cls.replace_rejected,
            model_params=model_params,
        )
    return resolved
