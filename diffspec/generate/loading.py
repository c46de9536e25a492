"""Load a diffusers pipeline for a :class:`~diffspec.plan.unit.PipelineKey`, the normal way.

``from_pretrained(source, revision=..., variant=..., torch_dtype=..., use_safetensors=...)``
with a hub id or a local folder, plus ControlNet weights, LoRA adapters and textual-inversion
embeddings from the model entry. Every failure a user can cause becomes a GenerationError that
says what to do.

The safety checker of Stable Diffusion 1.x is turned off (``safety_checker=None``): diffspec
builds datasets, and the checker's answer to a flagged image is a black image that would be
saved as a valid sample and silently poison the dataset. Filtering belongs in a visible
post-generation stage (``stages.filters``). Loading logs that it is off.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from diffspec.errors import GenerationError
from diffspec.plan.unit import ModelRef, PipelineKey
from diffspec.tables.families import (
    FAMILIES,
    controlnet_class_name,
    family_from_folder,
    guess_family,
    pipeline_class_name,
)
from diffspec.tables.sources import looks_like_path

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "float16", "bfloat16")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype to load with.

    ``auto`` is float16 on CUDA and float32 on CPU. float16 on CPU falls back to float32 with a
    warning (half-precision kernels are missing or slow there); bfloat16 works on CPU.
    """
    if dtype not in DTYPES:
        raise GenerationError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    on_cpu = torch.device(device).type == "cpu"
    if dtype == "auto":
        return torch.float32 if on_cpu else torch.float16
    if dtype == "float16" and on_cpu:
        log.warning("dtype float16 is not usable on CPU: loading in float32 instead")
        return torch.float32
    return _TORCH_DTYPES[dtype]


def resolve_family(model: ModelRef) -> str:
    if model.family in FAMILIES:
        return model.family
    return guess_family(model.source)


def _is_offline_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except Exception:  # pragma: no cover - huggingface_hub always present with diffusers
        pass
    return any(
        marker in text
        for marker in (
            "offline",
            "localentrynotfound",
            "connection",
            "max retries",
            "resolve",
            "cannot find the requested files",
            "not fully cached",
            "outgoing traffic has been disabled",
            "fetch metadata from the hub",
        )
    )


def _load_error(what: str, source: str, exc: BaseException, hub: bool) -> GenerationError:
    reason = f"{type(exc).__name__}: {exc}".strip()
    if len(reason) > 1200:
        reason = reason[:1200] + " ..."
    hints = []
    if "safetensors" in reason.lower():
        hints.append(
            "if the repository has only pickle (.bin) weights, set `use_safetensors: false` "
            "(only for weights you trust)"
        )
    if hub and _is_offline_error(exc):
        head = (
            f"cannot load {what} {source!r}: the weights are not available offline (they are not in the "
            "local Hugging Face cache and the hub cannot be reached); download them once with network "
            f"access (e.g. `huggingface-cli download {source}`) or point `source` at a local folder"
        )
    else:
        head = f"cannot load {what} {source!r}"
    if hub and "://" not in source and not Path(source).expanduser().exists():
        hints.append(
            f"if {source!r} is meant as a local folder, it does not exist (relative to {Path.cwd()}); "
            "use an absolute path or ./relative/path"
        )
    message = head + ". Reason: " + reason
    if hints:
        message += ". Hint: " + "; ".join(hints)
    return GenerationError(message)


def _check_local_folder(source: str, family: str, what: str = "model") -> None:
    path = Path(source).expanduser()
    if not path.exists():
        raise GenerationError(f"{what} folder {source!r} does not exist")
    if path.is_file():
        raise GenerationError(
            f"{what} source {source!r} is a file; diffspec loads diffusers pipeline folders "
            "(made with `save_pretrained`) or hub ids"
        )
    folder_family = family_from_folder(path)  # raises when model_index.json is missing/unknown
    if folder_family == "kandinsky" and family == "kandinsky":
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        if "prior_prior" not in index:
            raise GenerationError(
                f"{what} folder {source!r} holds a Kandinsky 2.2 decoder without its prior; diffspec "
                "runs Kandinsky 2.2 through the combined pipelines: save a KandinskyV22CombinedPipeline "
                "(decoder + prior) there, e.g. AutoPipelineForText2Image.from_pretrained("
                "'kandinsky-community/kandinsky-2-2-decoder').save_pretrained(folder)"
            )
    if folder_family != family:
        raise GenerationError(
            f"{what} folder {source!r} holds a {folder_family} pipeline but the model entry says "
            f"family {family!r}; set `family: {folder_family}` (or `auto`)"
        )


def _dtype_kwarg(torch_dtype: torch.dtype) -> dict[str, Any]:
    """``dtype=`` for diffusers that renamed ``torch_dtype`` (0.36+), else ``torch_dtype=``."""
    try:
        from diffusers.utils import deprecation_utils

        renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    except ImportError:  # pragma: no cover
        renamed = False
    return {"dtype": torch_dtype} if renamed else {"torch_dtype": torch_dtype}


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No "Loading pipeline components" progress bars while loading (restored afterwards)."""
    from diffusers.utils import logging as dlogging

    try:
        from transformers.utils import logging as tlogging
    except ImportError:  # pragma: no cover
        tlogging = None
    was_diffusers = dlogging.is_progress_bar_enabled()
    was_transformers = tlogging.is_progress_bar_enabled() if tlogging else False
    dlogging.disable_progress_bar()
    if tlogging:
        tlogging.disable_progress_bar()
    try:
        yield
    finally:
        if was_diffusers:
            dlogging.enable_progress_bar()
        if tlogging and was_transformers:
            tlogging.enable_progress_bar()


def _from_pretrained_kwargs(model: ModelRef, torch_dtype: torch.dtype, hub: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {**_dtype_kwarg(torch_dtype), "use_safetensors": model.use_safetensors}
    if model.revision and hub:
        kwargs["revision"] = model.revision
    if model.variant:
        kwargs["variant"] = model.variant
    if model.trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


def _load_builtin(key: PipelineKey, torch_dtype: torch.dtype) -> Any:
    name = key.model.source.split(":", 1)[1]
    if key.mode != "txt2img":
        raise GenerationError(f"builtin:{name} supports mode txt2img only, not {key.mode!r}")
    try:
        from diffspec.generate.builtin import builtin_path
        from diffspec.generate.builtin.digits import DigitsPipeline
    except ImportError as exc:
        raise GenerationError(f"the built-in model {name!r} is not available in this install: {exc}") from exc
    try:
        path = builtin_path(name)
    except FileNotFoundError as exc:
        raise GenerationError(f"unknown or missing built-in model {key.model.source!r}: {exc}") from exc
    try:
        return DigitsPipeline.from_pretrained(str(path), **_dtype_kwarg(torch_dtype), use_safetensors=True)
    except Exception as exc:  # noqa: BLE001 - reported to the user with its reason
        raise _load_error("built-in model", key.model.source, exc, hub=False) from exc


def _load_controlnet(model: ModelRef, family: str, torch_dtype: torch.dtype) -> Any:
    import diffusers

    if not model.controlnet:
        raise GenerationError(
            f"mode controlnet needs ControlNet weights: set `controlnet:` (a hub id or folder) in model {model.name!r}"
        )
    cls = getattr(diffusers, controlnet_class_name(family))
    hub = not looks_like_path(model.controlnet)
    if not hub:
        path = Path(model.controlnet).expanduser()
        if not (path / "config.json").is_file():
            raise GenerationError(
                f"ControlNet folder {model.controlnet!r} has no config.json (expected a "
                f"{cls.__name__} saved with `save_pretrained`)"
            )
    try:
        return cls.from_pretrained(model.controlnet, **_dtype_kwarg(torch_dtype), use_safetensors=model.use_safetensors)
    except Exception as exc:  # noqa: BLE001
        raise _load_error("ControlNet", model.controlnet, exc, hub=hub) from exc


def _load_loras(pipe: Any, model: ModelRef) -> None:
    if not model.loras:
        return
    if not hasattr(pipe, "load_lora_weights"):
        raise GenerationError(f"{type(pipe).__name__} does not support LoRA adapters (model {model.name!r})")
    names, scales = [], []
    for i, lora in enumerate(model.loras):
        name = f"lora_{i}"
        kwargs: dict[str, Any] = {"adapter_name": name}
        if lora.weight_name:
            kwargs["weight_name"] = lora.weight_name
        if lora.revision:
            kwargs["revision"] = lora.revision
        try:
            pipe.load_lora_weights(lora.source, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if "peft" in str(exc).lower():
                raise GenerationError(
                    f"loading LoRA {lora.source!r} needs the `peft` package: pip install peft"
                ) from exc
            raise _load_error("LoRA", lora.source, exc, hub=not looks_like_path(lora.source)) from exc
        names.append(name)
        scales.append(float(lora.scale))
    pipe.set_adapters(names, adapter_weights=scales)
    log.info("loaded %d LoRA adapter(s) with scales %s", len(names), scales)


def _load_embeddings(pipe: Any, model: ModelRef, family: str) -> None:
    if not model.embeddings:
        return
    if not hasattr(pipe, "load_textual_inversion"):
        raise GenerationError(
            f"{type(pipe).__name__} does not support textual-inversion embeddings (model {model.name!r})"
        )
    for emb in model.embeddings:
        try:
            if family == "sdxl":
                _load_sdxl_embedding(pipe, emb.source, emb.token, emb.weight_name)
            else:
                kwargs: dict[str, Any] = {}
                if emb.token:
                    kwargs["token"] = emb.token
                if emb.weight_name:
                    kwargs["weight_name"] = emb.weight_name
                pipe.load_textual_inversion(emb.source, **kwargs)
        except GenerationError:
            raise
        except Exception as exc:  # noqa: BLE001
            hub = not looks_like_path(emb.source)
            raise _load_error("textual-inversion embedding", emb.source, exc, hub=hub) from exc


def _load_sdxl_embedding(pipe: Any, source: str, token: str | None, weight_name: str | None) -> None:
    """SDXL embeddings hold one tensor per text encoder (``clip_l``, ``clip_g``)."""
    from safetensors.torch import load_file

    path = Path(source).expanduser()
    if path.is_dir() and weight_name:
        path = path / weight_name
    if not path.is_file():
        raise GenerationError(
            f"SDXL textual inversion {source!r}: give a local .safetensors file with `clip_l` and `clip_g` tensors"
        )
    if not token:
        raise GenerationError(f"SDXL textual inversion {source!r} needs `token:` (the word that triggers it)")
    state = load_file(str(path))
    if not {"clip_l", "clip_g"} <= set(state):
        raise GenerationError(
            f"SDXL textual inversion {source!r} must hold `clip_l` and `clip_g` tensors, found {sorted(state)}"
        )
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(
        state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )


def load_pipeline(key: PipelineKey, device: str = "cpu", dtype: str | None = None, place: bool = True) -> Any:
    """Load the pipeline for ``key`` (its model, mode and control), with adapters.

    ``dtype`` overrides ``key.model.dtype`` (``auto``: float16 on CUDA, float32 on CPU).
    With ``place`` the pipeline is moved to ``device``; the Backend passes ``place=False`` and
    places it through a memory strategy instead (which may offload rather than move).
    """
    with quiet_progress():
        pipe, family = _load(key, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    if place:
        pipe.to(device)
    log.info("loaded %s (%s, %s) as %s in %s", key.model.source, family, key.mode, type(pipe).__name__, pipe.dtype)
    return pipe


def _load(key: PipelineKey, device: str, dtype: str | None) -> tuple[Any, str]:
    import diffusers

    model = key.model
    torch_dtype = resolve_dtype(dtype or model.dtype, device)
    if model.source.startswith("builtin:"):
        pipe = _load_builtin(key, torch_dtype)
        family = "builtin"
    else:
        family = resolve_family(model)
        class_name = pipeline_class_name(family, key.mode)
        cls = getattr(diffusers, class_name, None)
        if cls is None:
            raise GenerationError(f"diffusers {diffusers.__version__} has no pipeline class {class_name}")
        hub = not looks_like_path(model.source)
        if not hub:
            _check_local_folder(model.source, family)
        kwargs = _from_pretrained_kwargs(model, torch_dtype, hub)
        init_params = inspect.signature(cls.__init__).parameters
        if "safety_checker" in init_params:
            kwargs["safety_checker"] = None
            kwargs["requires_safety_checker"] = False
            log.info(
                "safety checker is off for %s: a flagged image would be replaced by a black image "
                "that silently poisons the dataset; filter in a post-generation stage instead",
                model.source,
            )
        if key.mode == "controlnet":
            kwargs["controlnet"] = _load_controlnet(model, family, torch_dtype)
        source = str(Path(model.source).expanduser()) if not hub else model.source
        try:
            pipe = cls.from_pretrained(source, **kwargs)
        except GenerationError:
            raise
        except Exception as exc:  # noqa: BLE001 - every load failure is reported with its reason
            raise _load_error("model", model.source, exc, hub=hub) from exc
        _load_loras(pipe, model)
        _load_embeddings(pipe, model, family)
    return pipe, family
