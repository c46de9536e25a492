"""Work units: the content-addressed atoms of a plan.

A unit's fingerprint is the sha256 of a canonical text of exactly what changes its pixels.
The text has two parts so that a million units hash fast: a *group* part shared by every unit
that runs in one pipeline call (model, scheduler, size, steps, ...), and a *unit* part (prompt,
negative prompt, seed, input hashes). Canonical form, version 1::

    diffspec-unit/v1\n<json of the group fields, sorted keys>\n<json list [prompt, negative, seed, input_hash, mask_hash]>

Labels, descriptions, output paths, class names and key order are not in it: editing them
re-runs no GPU work. There is no separate metadata hash: a catalog row records the label its
unit was made under, and a later label edit does not rewrite rows that are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from diffspec.tables.speed import ATTENTION_BACKENDS

CANONICAL_VERSION = "diffspec-unit/v1"
_SPACES = re.compile(r"\s+")


def normalize_prompt(text: str) -> str:
    """Whitespace is not meaning: 'a  cat\\n' and 'a cat' make the same unit."""
    return _SPACES.sub(" ", text).strip()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class LoraRef:
    source: str  # hub id, or an absolute local path
    weight_name: str | None = None
    scale: float = 1.0
    revision: str | None = None
    content: str | None = None  # sha256 of the local file(s) loaded; None for a hub id

    def identity(self) -> str:
        """A local adapter is its bytes (diffspec/content.py); a hub one its (id, revision)."""
        return f"content:{self.content}" if self.content else self.source


@dataclass(frozen=True, slots=True)
class EmbeddingRef:
    source: str  # hub id, or an absolute local path
    token: str | None = None
    weight_name: str | None = None
    content: str | None = None  # sha256 of the local file(s) loaded; None for a hub id

    def identity(self) -> str:
        return f"content:{self.content}" if self.content else self.source


@dataclass(frozen=True, slots=True)
class SpeedOptions:
    """A model's speed options (`models.<m>.speed`), resolved. Which of them change pixels is
    decided here and documented in diffspec/tables/speed.py and docs/determinism.md."""

    compile: tuple[tuple[str, Any], ...] | None = None  # torch.compile options, sorted; None: off
    channels_last: bool = False
    attention: str | None = None  # a diffusers attention backend name
    cache: str | None = None  # our step-cache name (tables/speed.py CACHE_CLASSES)
    cache_params: tuple[tuple[str, Any], ...] = ()  # sorted; lists as tuples

    def pixel_fields(self) -> dict[str, Any]:
        """What goes into the fingerprint: a step cache with its parameters, and an attention
        backend that approximates attention. Empty when neither is set, so a model without speed
        options keeps the fingerprints it had before speed options existed."""
        fields: dict[str, Any] = {}
        if self.cache is not None:
            fields["cache"] = [self.cache, dict(self.cache_params)]
        if self.attention is not None and not ATTENTION_BACKENDS.get(self.attention, False):
            fields["attention"] = self.attention
        return fields

    def to_dict(self) -> dict[str, Any]:
        """Every option that is set, for the run record and the load event (JSON-ready)."""
        out: dict[str, Any] = {}
        if self.compile is not None:
            out["compile"] = dict(self.compile)
        if self.channels_last:
            out["channels_last"] = True
        if self.attention is not None:
            out["attention"] = self.attention
        if self.cache is not None:
            out["cache"] = {self.cache: {k: list(v) if isinstance(v, tuple) else v for k, v in self.cache_params}}
        return out

    def __bool__(self) -> bool:
        return bool(self.to_dict())


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model resolved from the spec: everything needed to load it."""

    name: str
    source: str
    family: str  # resolved: sd | sdxl | sd3 | flux | kandinsky | builtin
    revision: str | None = None
    variant: str | None = None
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU
    use_safetensors: bool = True
    trust_remote_code: bool = False
    controlnet: str | None = None
    loras: tuple[LoraRef, ...] = ()
    embeddings: tuple[EmbeddingRef, ...] = ()
    params_b: float | None = None
    content: str | None = None  # sha256 of a local model folder's files; None for a hub id
    controlnet_content: str | None = None  # the same for a local ControlNet folder
    speed: SpeedOptions = SpeedOptions()

    def pixel_fields(self) -> dict[str, Any]:
        """The fields that change pixels (the model's *name* in the spec does not). A local
        folder or file is identified by its content, not its path: replacing a LoRA file at the
        same path re-plans its units, moving the project folder re-plans nothing."""
        fields: dict[str, Any] = {
            "source": f"content:{self.content}" if self.content else self.source,
            "family": self.family,
            "revision": self.revision,
            "variant": self.variant,
            "dtype": self.dtype,
            "controlnet": f"content:{self.controlnet_content}" if self.controlnet_content else self.controlnet,
            "loras": [[lora.identity(), lora.weight_name, lora.scale, lora.revision] for lora in self.loras],
            "embeddings": [[e.identity(), e.token, e.weight_name] for e in self.embeddings],
        }
        speed = self.speed.pixel_fields()
        if speed:  # only when set: every fingerprint made before speed options stays as it was
            fields["speed"] = speed
        return fields


@dataclass(frozen=True, slots=True)
class PipelineKey:
    """Everything units must share to run in one pipeline call."""

    model: ModelRef
    mode: str  # txt2img | img2img | inpaint | controlnet
    scheduler: str  # our scheduler name, see tables/schedulers.py
    scheduler_kwargs: tuple[tuple[str, Any], ...]
    width: int
    height: int
    steps: int
    guidance: float
    strength: float | None = None
    conditioning_scale: float | None = None
    control: str | None = None  # canny | depth | image
    # The diffusers class and kwargs our scheduler name stands for (tables/schedulers.py), so a
    # change of that table re-plans exactly the units it affects.
    scheduler_entry: str = ""

    def load_key(self) -> tuple[ModelRef, str]:
        """What forces a pipeline (re)load; the rest (scheduler, size, control...) changes per call."""
        return (self.model, self.mode)

    def canonical_group(self) -> str:
        fields = {
            "model": self.model.pixel_fields(),
            "mode": self.mode,
            "scheduler": self.scheduler,
            "scheduler_entry": self.scheduler_entry,
            "scheduler_kwargs": dict(self.scheduler_kwargs),
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance": self.guidance,
            "strength": self.strength if self.mode in ("img2img", "inpaint") else None,
            "conditioning_scale": self.conditioning_scale if self.mode == "controlnet" else None,
            "control": self.control if self.mode == "controlnet" else None,
        }
        return canonical_json(fields)

    def group_prefix(self) -> str:
        return f"{CANONICAL_VERSION}\n{self.canonical_group()}\n"


def unit_suffix(prompt: str, negative: str, seed: int, input_hash: str | None, mask_hash: str | None) -> str:
    return canonical_json([prompt, negative, seed, input_hash, mask_hash])


def fingerprint_of(
    key: PipelineKey, prompt: str, negative: str, seed: int, input_hash: str | None = None, mask_hash: str | None = None
) -> str:
    text = key.group_prefix() + unit_suffix(prompt, negative, seed, input_hash, mask_hash)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class WorkUnit:
    """One image to make. Identity is `fingerprint`; the rest says how and for whom."""

    fingerprint: str
    key: PipelineKey
    class_name: str  # the class that owns the file (first by name when deduplicated)
    index: int  # position in its class's order (docs/assignment.md): stable when targets change
    seed: int
    prompt: str
    negative: str
    input_image: str | None = None  # absolute path
    input_hash: str | None = None
    mask_image: str | None = None
    mask_hash: str | None = None
    variant: int = 0  # which prompt/sweep variant of its class
    classes: tuple[str, ...] = field(default=())  # every class that asked for it

    def canonical(self) -> str:
        return self.key.group_prefix() + unit_suffix(
            self.prompt, self.negative, self.seed, self.input_hash, self.mask_hash
        )

    @property
    def relpath(self) -> str:
        """Where the image lives, relative to the output root."""
        return f"images/{self.class_name}/{self.fingerprint}.png"
