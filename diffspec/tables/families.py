"""Model families: which diffusers pipeline class runs a (family, mode), torch-free.

`spec` validates with these, `plan` fingerprints and estimates with them, `generate` loads and
runs with them, so this module imports nothing heavy: pipeline classes are named by string and
resolved with ``getattr(diffusers, name)`` by generate's loader.

Families:

* ``sd`` — Stable Diffusion 1.x / 2.x (UNet, one CLIP text encoder)
* ``sdxl`` — Stable Diffusion XL (two CLIP text encoders, pooled embeds)
* ``sd3`` — Stable Diffusion 3 / 3.5 (MMDiT, CLIP x2 + T5, flow matching)
* ``flux`` — FLUX.1 (MMDiT, CLIP + T5, flow matching, guidance-distilled: no negative prompt)
* ``kandinsky`` — Kandinsky **2.2** through diffusers' *combined* pipelines, which hold the
  prior (CLIP text/vision + PriorTransformer) and the decoder (UNet + MoVQ) in one folder.
  A hub decoder id (``kandinsky-community/kandinsky-2-2-decoder``) loads its prior through
  diffusers' connected-pipeline mechanism; a local folder must be a saved combined pipeline.
  The prior runs with diffusers' combined-pipeline defaults (:data:`KANDINSKY_PRIOR_STEPS`
  steps, guidance :data:`KANDINSKY_PRIOR_GUIDANCE`), which are constants so they never change
  a fingerprint behind the user's back.
* ``builtin`` — the embedded models (``builtin:digits``), txt2img only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from diffspec.errors import GenerationError
from diffspec.tables.schedulers import SCHEDULER_TABLE
from diffspec.tables.sources import is_builtin, looks_like_path

FAMILIES: tuple[str, ...] = ("sd", "sdxl", "sd3", "flux", "kandinsky", "builtin")
MODES: tuple[str, ...] = ("txt2img", "img2img", "inpaint", "controlnet")

#: Diffusers pipeline class per (family, mode). A missing pair is unsupported.
PIPELINE_CLASSES: dict[tuple[str, str], str] = {
    ("sd", "txt2img"): "StableDiffusionPipeline",
    ("sd", "img2img"): "StableDiffusionImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionInpaintPipeline",
    ("sd", "controlnet"): "StableDiffusionControlNetPipeline",
    ("sdxl", "txt2img"): "StableDiffusionXLPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "inpaint"): "StableDiffusionXLInpaintPipeline",
    ("sdxl", "controlnet"): "StableDiffusionXLControlNetPipeline",
    ("sd3", "txt2img"): "StableDiffusion3Pipeline",
    ("sd3", "img2img"): "StableDiffusion3Img2ImgPipeline",
    ("sd3", "inpaint"): "StableDiffusion3InpaintPipeline",
    ("sd3", "controlnet"): "StableDiffusion3ControlNetPipeline",
    ("flux", "txt2img"): "FluxPipeline",
    ("flux", "img2img"): "FluxImg2ImgPipeline",
    ("flux", "inpaint"): "FluxInpaintPipeline",
    ("flux", "controlnet"): "FluxControlNetPipeline",
    ("kandinsky", "txt2img"): "KandinskyV22CombinedPipeline",
    ("kandinsky", "img2img"): "KandinskyV22Img2ImgCombinedPipeline",
    ("kandinsky", "inpaint"): "KandinskyV22InpaintCombinedPipeline",
    ("builtin", "txt2img"): "DigitsPipeline",
}

#: Why a (family, mode) pair is not supported, when there is more to say than "no".
_UNSUPPORTED_REASONS: dict[tuple[str, str], str] = {
    ("kandinsky", "controlnet"): (
        "ControlNet is not supported for Kandinsky 2.2 (its ControlNet decoder takes a depth "
        "hint and no text prompt, which does not fit a prompt-driven dataset); use family sd, "
        "sdxl, sd3 or flux for mode controlnet"
    ),
}

#: ControlNet model class per family (the ``controlnet:`` weights of a model entry).
CONTROLNET_CLASSES: dict[str, str] = {
    "sd": "ControlNetModel",
    "sdxl": "ControlNetModel",
    "sd3": "SD3ControlNetModel",
    "flux": "FluxControlNetModel",
}

#: Kind of default scheduler a family's checkpoints ship with.
DEFAULT_SCHEDULER_KIND: dict[str, str] = {
    "sd": "discrete",
    "sdxl": "discrete",
    "sd3": "flow_matching",
    "flux": "flow_matching",
    "kandinsky": "discrete",
    "builtin": "discrete",
}

#: Families whose text conditioning supports A1111-style prompt weighting (through compel).
PROMPT_WEIGHTING_FAMILIES: frozenset[str] = frozenset({"sd", "sdxl"})

#: Families that use no negative prompt (FLUX is guidance-distilled).
NO_NEGATIVE_FAMILIES: frozenset[str] = frozenset({"flux"})

#: Image width and height must be multiples of this (VAE downsampling x patch size of the
#: real checkpoints; Kandinsky's MoVQ needs 64). Pipelines would otherwise round silently.
SIZE_MULTIPLE: dict[str, int] = {"sd": 8, "sdxl": 8, "sd3": 16, "flux": 16, "kandinsky": 64, "builtin": 1}

#: Kandinsky 2.2 prior settings: diffusers' combined-pipeline defaults.
KANDINSKY_PRIOR_STEPS = 25
KANDINSKY_PRIOR_GUIDANCE = 4.0

# Pipeline class-name prefixes found in model_index.json, longest first.
_CLASS_PREFIXES: tuple[tuple[str, str], ...] = (
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("StableDiffusion", "sd"),
    ("Flux", "flux"),
    ("KandinskyV22", "kandinsky"),
    ("DigitsPipeline", "builtin"),
)

_XL_RE = re.compile(r"(^|[^a-z0-9])(sd)?xl([^a-z]|$)")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise GenerationError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise GenerationError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def family_from_class_name(class_name: str) -> str | None:
    """The family of a diffusers pipeline class name (``_class_name`` of model_index.json)."""
    for prefix, family in _CLASS_PREFIXES:
        if class_name.startswith(prefix):
            return family
    return None


def family_from_folder(folder: str | Path) -> str:
    """The family of a local pipeline folder, read from its ``model_index.json``."""
    path = Path(folder).expanduser()
    index = path / "model_index.json"
    if not path.is_dir():
        raise GenerationError(f"model folder {str(path)!r} does not exist")
    if not index.is_file():
        raise GenerationError(
            f"model folder {str(path)!r} has no model_index.json, so it is not a diffusers pipeline "
            "folder (make one with `pipeline.save_pretrained(folder)`)"
        )
    try:
        class_name = json.loads(index.read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GenerationError(f"cannot read the pipeline class from {str(index)!r}: {exc}") from exc
    family = family_from_class_name(str(class_name))
    if family is None:
        raise GenerationError(
            f"cannot tell the model family of pipeline class {class_name!r} in {str(index)!r}; "
            f"set `family:` to one of {', '.join(f for f in FAMILIES if f != 'builtin')}"
        )
    return family


def resolve_family(source: str, family: str) -> str:
    """The family a model entry names, or the guess from its source when it says ``auto``."""
    return family if family != "auto" else guess_family(source)


def guess_family(source: str) -> str:
    """Guess the family of a model source.

    ``builtin:`` prefix → builtin; an existing local folder → its model_index.json
    ``_class_name``; a hub id → by name: sd3 / stable-diffusion-3 → sd3, flux → flux,
    kandinsky → kandinsky, sdxl / xl → sdxl, anything else → sd.
    """
    if is_builtin(source):
        return "builtin"
    if looks_like_path(source):
        return family_from_folder(source)
    name = source.lower()
    if "stable-diffusion-3" in name or re.search(r"(^|[^a-z0-9])sd-?3", name):
        return "sd3"
    if "flux" in name:
        return "flux"
    if "kandinsky" in name:
        return "kandinsky"
    if "sdxl" in name or _XL_RE.search(name):
        return "sdxl"
    return "sd"


def supported_modes(family: str) -> tuple[str, ...]:
    _check_family(family)
    return tuple(mode for mode in MODES if (family, mode) in PIPELINE_CLASSES)


def pipeline_class_name(family: str, mode: str) -> str:
    """The diffusers pipeline class name for (family, mode); GenerationError if unsupported."""
    _check_family(family)
    _check_mode(mode)
    try:
        return PIPELINE_CLASSES[(family, mode)]
    except KeyError:
        reason = _UNSUPPORTED_REASONS.get((family, mode))
        if reason is None:
            reason = f"mode {mode!r} is not supported for family {family!r}"
        raise GenerationError(f"{reason} (family {family!r} supports: {', '.join(supported_modes(family))})") from None


def controlnet_class_name(family: str) -> str:
    _check_family(family)
    try:
        return CONTROLNET_CLASSES[family]
    except KeyError:
        raise GenerationError(
            f"ControlNet is not supported for family {family!r} (supported: {', '.join(CONTROLNET_CLASSES)})"
        ) from None


def is_flow_matching(family: str) -> bool:
    _check_family(family)
    return DEFAULT_SCHEDULER_KIND[family] == "flow_matching"


def supports_prompt_weighting(family: str) -> bool:
    return family in PROMPT_WEIGHTING_FAMILIES


def supports_negative_prompt(family: str) -> bool:
    return family not in NO_NEGATIVE_FAMILIES


def guidance_applies(family: str, guidance: float, distilled: bool = False) -> bool:
    """Whether classifier-free guidance runs: a second, negative-prompt pass of the denoiser.

    It needs a guidance scale above 1 (at 1 the guided and unguided predictions coincide) and a
    family that takes a negative prompt (FLUX is guidance-distilled: its guidance is an input of
    one pass). ``distilled`` is what only a loaded checkpoint can tell, e.g. an LCM UNet with a
    guidance embedding (``time_cond_proj_dim``); the planner cannot see it and passes False.
    The compiler drops the negative prompt from the fingerprint when this is False, the
    estimator counts one pass instead of two, and the backend encodes no negative.
    """
    return guidance > 1.0 and supports_negative_prompt(family) and not distilled


def compatible_scheduler_names(family: str) -> tuple[str, ...]:
    """Our scheduler names usable with a family's checkpoints (a static first check; the
    loader checks again against the checkpoint's real scheduler config)."""
    flow = is_flow_matching(family)
    return tuple(
        name
        for name, entry in SCHEDULER_TABLE.items()
        if name == "default" or (entry is not None and entry.flow_matching == flow)
    )


def check_scheduler_name(family: str, name: str) -> None:
    """GenerationError when scheduler ``name`` cannot drive models of ``family``."""
    if name not in SCHEDULER_TABLE:
        raise GenerationError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULER_TABLE)}")
    allowed = compatible_scheduler_names(family)
    if name not in allowed:
        kind = "a flow-matching" if is_flow_matching(family) else "a noise-prediction (discrete)"
        raise GenerationError(
            f"scheduler {name!r} cannot drive {family} models ({family} is {kind} model family); "
            f"compatible schedulers: {', '.join(allowed)}"
        )


def check_size(family: str, width: int, height: int) -> None:
    """GenerationError when (width, height) is not a size the family's pipelines make exactly."""
    _check_family(family)
    multiple = SIZE_MULTIPLE[family]
    if width % multiple or height % multiple:

        def near(v: int) -> str:
            low = max(multiple, v - v % multiple)
            return f"{low}" if low == v else f"{low} or {low + multiple}"

        raise GenerationError(
            f"size {width}x{height} is not possible for {family} models: width and height must be "
            f"multiples of {multiple} (try {near(width)} x {near(height)})"
        )


def check_supported(family: str, mode: str, scheduler: str | None = None) -> str:
    """Validate-time check of a (family, mode[, scheduler]); returns the pipeline class name."""
    name = pipeline_class_name(family, mode)
    if scheduler is not None:
        check_scheduler_name(family, scheduler)
    return name
