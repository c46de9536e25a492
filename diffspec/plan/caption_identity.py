"""What identifies a caption unit, without torch: the sampling parameters, the seed from the
unit's identity and the fingerprint. In ``plan/`` so that `plan` computes caption units on a
CPU-only machine; :mod:`diffspec.stages.captions` runs the language model and imports these.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffspec.errors import StageError
from diffspec.plan.seeds import derive_seeds
from diffspec.plan.stage_identity import HFModelRef
from diffspec.plan.unit import canonical_json, normalize_prompt
from diffspec.spec.instruction import render_instruction

CAPTION_KIND = "captions"
#: Version of the canonical text hashed into a caption fingerprint; bump it when the prompt
#: building or the cleaning of replies changes what a unit produces.
CAPTION_CANONICAL = "diffspec-caption/v1"
TEXT_CANONICAL = "diffspec-text/v1"

DEFAULT_CAPTION_MODEL = "google/gemma-3-1b-it"  # the food seed's model
#: The food seed's request in words: variations "faithful to the original concept while
#: introducing diversity via ingredients, styles, or preparation", one per generation.
DEFAULT_INSTRUCTION = (
    'Write one new caption for a photo of this dish or drink: "{text}". '
    "Stay faithful to the original concept, but vary the ingredients, the style or the preparation. "
    "Answer with the caption only, in one sentence."
)


@dataclass(frozen=True, slots=True)
class CaptionParams:
    """Everything besides the model and the source text that changes a caption."""

    instruction: str = DEFAULT_INSTRUCTION
    temperature: float = 0.8  # 0: greedy (the seed is then irrelevant but still recorded)
    top_p: float = 1.0  # nucleus sampling; 1.0 keeps every token
    top_k: int = 0  # 0: off
    max_new_tokens: int = 64
    base_seed: int = 0

    def __post_init__(self) -> None:
        render_instruction(self.instruction, "x")  # placeholders are checked here, not at run time
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and 0 <= self.temperature <= 5
        ):
            raise StageError(f"captions: `temperature` must be a number in [0, 5], got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise StageError(f"captions: `top_p` must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise StageError(f"captions: `top_k` must be a non-negative integer (0: off), got {self.top_k!r}")
        if not (isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 2048):
            raise StageError(f"captions: `max_new_tokens` must be an integer in [1, 2048], got {self.max_new_tokens!r}")

    def identity(self) -> dict[str, Any]:
        """The sampling fields of a fingerprint (the seed is hashed per unit, not the base seed)."""
        return {
            "instruction": self.instruction,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
        }


@dataclass(frozen=True, slots=True)
class CaptionRequest:
    """One caption to make: variation ``variation`` of ``source_text``, sampled with ``seed``.

    ``input_fingerprint`` is what the caption's fingerprint hashes as its input: by default
    :func:`text_fingerprint` of the source text; a planner whose texts come from an upstream
    unit (a CSV row, another stage) passes that unit's fingerprint instead.
    """

    source_text: str
    variation: int
    seed: int
    input_fingerprint: str = ""

    def input_fp(self) -> str:
        return self.input_fingerprint or text_fingerprint(self.source_text)


def text_fingerprint(text: str) -> str:
    """The fingerprint of a source text as an input (whitespace-normalised, like prompts)."""
    return hashlib.sha256(canonical_json([TEXT_CANONICAL, normalize_prompt(text)]).encode("utf-8")).hexdigest()


def caption_seed(base_seed: int, source_text: str, variation: int) -> int:
    """The seed of one caption unit, from its identity (never from a batch position)."""
    if variation < 0:
        raise StageError(f"captions: a variation index is >= 0, got {variation}")
    stream = "caption:" + normalize_prompt(source_text)
    return int(derive_seeds(int(base_seed), stream, np.array([variation], dtype=np.int64))[0])


def caption_requests(texts: Iterable[str], variations: int, params: CaptionParams) -> list[CaptionRequest]:
    """``variations`` requests per distinct source text (texts equal after whitespace
    normalisation are one text), in input order."""
    if not (isinstance(variations, int) and 1 <= variations <= 32):
        raise StageError(f"captions: `variations` must be an integer in [1, 32], got {variations!r}")
    seen: dict[str, None] = {}
    for text in texts:
        norm = normalize_prompt(text)
        if not norm:
            raise StageError("captions: a source text is empty")
        seen.setdefault(norm, None)
    return [
        CaptionRequest(text, v, caption_seed(params.base_seed, text, v), text_fingerprint(text))
        for text in seen
        for v in range(variations)
    ]


def caption_fingerprint(model: HFModelRef, params: CaptionParams, seed: int, input_fingerprint: str) -> str:
    """sha256 of the canonical text of a caption unit: stage kind, model source and revision (and
    dtype, safetensors, remote code), every sampling parameter, the unit's seed and the
    fingerprint of its input (:func:`text_fingerprint` of the source text, or of whatever
    upstream unit produced it)."""
    body = {
        "kind": CAPTION_KIND,
        "model": model.identity(),
        "params": params.identity(),
        "seed": int(seed),
        "input": input_fingerprint,
    }
    return hashlib.sha256((CAPTION_CANONICAL + "\n" + canonical_json(body)).encode("utf-8")).hexdigest()
