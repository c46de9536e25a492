"""Plan-time estimates of memory strategy, batch size and time. No torch: tables and file headers.

Parameter counts come from, in order: the model's `params_b` in the spec, the safetensors
headers of a local model folder (the JSON header lists every tensor's shape), or the
per-family table below. Activation memory and speed are per-family figures at the family's
native resolution, scaled by pixel count; they are deliberately rough (±50%) and documented
in docs/estimates.md. Time estimates prefer durations the catalog recorded for the same model,
size and steps.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from diffspec.plan.unit import PipelineKey
from diffspec.tables.families import guidance_applies, supports_negative_prompt

# family: (parameters in billions, native side in px, activation GB per image at native size in fp16,
#          seconds per step per image at native size on a reference GPU (A10G-class, fp16), same on CPU fp32)
FAMILY_TABLE: dict[str, tuple[float, int, float, float, float]] = {
    "sd": (1.07, 512, 1.2, 0.035, 1.6),
    "sdxl": (3.47, 1024, 3.0, 0.12, 9.0),
    "sd3": (7.7, 1024, 3.5, 0.20, 14.0),
    "flux": (16.9, 1024, 4.5, 0.45, 40.0),
    "kandinsky": (3.3, 768, 2.0, 0.08, 5.0),
    "builtin": (0.0002, 16, 0.0005, 0.0005, 0.0004),
}
# The fraction of all weights that the largest component (UNet / transformer) holds: what
# model offload keeps resident.
LARGEST_COMPONENT = {"sd": 0.8, "sdxl": 0.74, "sd3": 0.3, "flux": 0.7, "kandinsky": 0.4, "builtin": 1.0}
STRATEGIES = ("none", "attention_slicing", "vae_tiling", "model_offload", "sequential_offload")
_FACTORS = {
    "none": 1.0,
    "attention_slicing": 0.6,
    "vae_tiling": 0.45,
    "model_offload": 0.45,
    "sequential_offload": 0.45,
}


@dataclass(frozen=True)
class MemoryPlan:
    device: str  # "cuda" or "cpu": what the budget describes
    budget_gb: float
    weights_gb: float
    per_image_gb: float
    strategy: str
    batch_size: int
    fits: bool
    source: str  # where the parameter count came from

    def describe(self) -> str:
        if not self.fits:
            return f"does not fit {self.budget_gb:g} GB even with sequential offload"
        return f"{self.strategy}, batch {self.batch_size}"


def _safetensors_params(folder: Path) -> int | None:
    total = 0
    files = list(folder.rglob("*.safetensors"))
    if not files:
        return None
    for file in files:
        try:
            with file.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for name, info in header.items():
            if name != "__metadata__":
                total += math.prod(info.get("shape", [])) if info.get("shape") else 1
    return total


def parameter_billions(key: PipelineKey) -> tuple[float, str]:
    model = key.model
    if model.params_b:
        return model.params_b, "spec"
    folder = Path(model.source)
    if not model.source.startswith("builtin:") and folder.is_dir():
        count = _safetensors_params(folder)
        if count:
            return count / 1e9, "safetensors headers"
    if model.source.startswith("builtin:"):
        from importlib.util import find_spec

        spec = find_spec("diffspec.generate.builtin")
        if spec and spec.submodule_search_locations:
            count = _safetensors_params(Path(list(spec.submodule_search_locations)[0]) / model.source.split(":", 1)[1])
            if count:
                return count / 1e9, "safetensors headers"
    return FAMILY_TABLE.get(model.family, FAMILY_TABLE["sd"])[0], "family table"


def _bytes_per_param(dtype: str, device: str) -> int:
    if dtype in ("float16", "bfloat16"):
        return 2
    if dtype == "float32":
        return 4
    return 2 if device == "cuda" else 4


def memory_plan(key: PipelineKey, device: str, budget: float, max_batch: int, forced: str = "auto") -> MemoryPlan:
    """The lightest strategy under which ``key``'s weights and at least one image fit ``budget``
    GB on ``device`` (cuda or cpu), and the largest batch that then fits, at most ``max_batch``."""
    params_b, source = parameter_billions(key)
    family = key.model.family if key.model.family in FAMILY_TABLE else "sd"
    _, native, act_native, _, _ = FAMILY_TABLE[family]
    bpp = _bytes_per_param(key.model.dtype, device)
    weights = params_b * 1e9 * bpp / 2**30
    per_image = act_native * (key.width * key.height) / (native * native) * (bpp / 2)
    order = STRATEGIES if forced == "auto" else (forced,)
    for strategy in order:
        resident = weights
        if strategy == "model_offload" and device == "cuda":
            resident = weights * LARGEST_COMPONENT.get(family, 0.8)
        elif strategy == "sequential_offload" and device == "cuda":
            resident = min(weights, 0.5)
        act = per_image * _FACTORS[strategy]
        room = budget - resident
        if room >= act:
            batch = max(1, min(max_batch, int(room // act) if act > 0 else max_batch))
            return MemoryPlan(device, budget, weights, per_image, strategy, batch, True, source)
    return MemoryPlan(device, budget, weights, per_image, order[-1], 1, False, source)


def seconds_per_image(
    key: PipelineKey, device: str, batch: int, history: dict[tuple[str, int, int, int], float]
) -> tuple[float, str]:
    """Estimated seconds per image: from the catalog's record if it has one, else the table."""
    recorded = history.get((key.model.source, key.width, key.height, key.steps))
    if recorded is not None:
        return recorded, "catalog"
    family = key.model.family if key.model.family in FAMILY_TABLE else "sd"
    _, native, _, gpu_step, cpu_step = FAMILY_TABLE[family]
    per_step = gpu_step if device == "cuda" else cpu_step
    scale = (key.width * key.height) / (native * native)
    steps = key.steps
    if key.mode in ("img2img", "inpaint") and key.strength:
        steps = max(1, int(steps * key.strength))
    # Batching amortises fixed per-call costs: a modest, documented gain. Table figures are at a
    # family's usual passes per step: two (classifier-free guidance) for the families that take a
    # negative prompt, one for FLUX; where guidance does not apply to a two-pass family, one is skipped.
    batch_gain = 1.0 / (1.0 + 0.1 * math.log2(max(1, batch)))
    two_pass_table = supports_negative_prompt(family)
    cfg = 0.55 if two_pass_table and not guidance_applies(family, key.guidance) else 1.0
    return per_step * steps * scale * cfg * batch_gain, "table"
