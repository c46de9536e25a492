"""Schedulers come from config: the diffusers side of the scheduler table.

The table itself and its names live in :mod:`diffspec.tables.schedulers` (torch-free, the
planner puts the entry into the fingerprint); :func:`make_scheduler` imports diffusers when
called and swaps a scheduler the diffusers way, ``Class.from_config(base_config, **kwargs)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from diffspec.errors import GenerationError
from diffspec.tables.schedulers import SCHEDULER_TABLE, scheduler_table_entry

_FLOW_CLASSES = frozenset(
    {"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler"}
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    tolist = getattr(value, "tolist", None)  # numpy arrays / scalars
    if callable(tolist):
        return _jsonable(tolist())
    return str(value)


def config_record(scheduler: Any) -> dict[str, Any]:
    """A JSON-safe dict of a scheduler's config with its class name, for the catalog.

    Private keys (``_diffusers_version``, ``_use_default_values``) are left out so the
    record does not change with the diffusers version alone."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    record = {"_class_name": type(scheduler).__name__, **_jsonable(config)}
    json.dumps(record)  # must serialise
    return record


def _diffusers_class(class_name: str) -> Any:
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise GenerationError(f"diffusers {diffusers.__version__} has no scheduler class {class_name!r}")
    return cls


def _compatible_names(base_class_name: str) -> list[str]:
    base = _diffusers_class(base_class_name)
    names = [base_class_name, *getattr(base, "_compatibles", [])]
    return [n if isinstance(n, str) else n.__name__ for n in names]


def compatible_names_for(base_class_name: str) -> list[str]:
    """Our scheduler names that can replace a scheduler of class ``base_class_name``."""
    compatible = set(_compatible_names(base_class_name))
    out = []
    for name, entry in SCHEDULER_TABLE.items():
        if entry is None or entry.class_name in compatible:
            out.append(name)
    return out


def _check_kwargs(cls: Any, kwargs: Mapping[str, Any], what: str) -> None:
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise GenerationError(
            f"scheduler_kwargs {unknown} are not options of {cls.__name__} ({what}); "
            f"valid options: {', '.join(sorted(accepted))}"
        )


def make_scheduler(
    name: str,
    base_config: Mapping[str, Any],
    extra_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build scheduler ``name`` from a pipeline's scheduler config.

    ``base_config`` is the pipeline's own ``scheduler.config`` (with ``_class_name``); the new
    scheduler is ``Class.from_config(base_config, **table_kwargs, **extra_kwargs)`` so it keeps
    the checkpoint's betas, prediction type and timestep spacing. Returns ``(scheduler, record)``
    where ``record`` is :func:`config_record` of the result. Raises GenerationError when the
    scheduler cannot drive the model (e.g. a DDIM on a flow-matching model), naming the
    compatible ones.
    """
    extra = dict(extra_kwargs or {})
    class_name, table_kwargs = scheduler_table_entry(name)
    base_class_name = base_config.get("_class_name")
    if not base_class_name:
        raise GenerationError("the pipeline's scheduler config has no _class_name; cannot swap its scheduler")
    if class_name is None:  # default: the pipeline's own class, maybe with extra kwargs
        cls = _diffusers_class(str(base_class_name))
    else:
        compatible = _compatible_names(str(base_class_name))
        is_flow_base = str(base_class_name) in _FLOW_CLASSES
        entry = SCHEDULER_TABLE[name]
        assert entry is not None
        if class_name not in compatible or entry.flow_matching != is_flow_base:
            allowed = [
                n
                for n in compatible_names_for(str(base_class_name))
                if SCHEDULER_TABLE[n] is None or SCHEDULER_TABLE[n].flow_matching == is_flow_base
            ]
            kind = "flow-matching" if is_flow_base else "noise-prediction"
            raise GenerationError(
                f"scheduler {name!r} ({class_name}) is not compatible with this model, whose "
                f"scheduler is {base_class_name} ({kind}); compatible schedulers: {', '.join(allowed)}"
            )
        cls = _diffusers_class(class_name)
    kwargs = {**table_kwargs, **extra}
    _check_kwargs(cls, kwargs, f"scheduler {name!r}")
    try:
        scheduler = cls.from_config(dict(base_config), **kwargs)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise GenerationError(f"cannot build scheduler {name!r} ({cls.__name__}) with {kwargs}: {exc}") from exc
    return scheduler, config_record(scheduler)
