"""Caption variations from a causal language model (the food seed's step 1).

For each source text (a class prompt, or a row of a CSV column) the stage asks the model for
``variations`` new captions, **one generation per variation**: each (source text, variation
index) is its own unit with its own seed, so raising ``variations`` from 3 to 4 adds one caption
and keeps the first three, and a caption never depends on the others' text.

Seeds come from identity, not from batch position: ``seed = derive_seeds(base_seed,
"caption:" + normalised source text, [variation])`` (the image units' scheme,
:mod:`diffspec.plan.seeds`). Sampling is done row by row with a ``torch.Generator`` per row, inside
one batched ``generate`` call (greedy decoding over a logits processor that samples each row from
its own generator), so a caption is the same whichever batch, batch size or position it runs in,
as far as the model's logits are: left padding changes matrix shapes, and on some kernels that
moves logits in the last bits, which can flip a sample that sits on a tie. On CPU float32 the
tests see identical text in and out of batches.

The prompt is the instruction with ``{text}`` replaced by the source text, wrapped in the
tokenizer's chat template when it has one (``google/gemma-3-1b-it`` has), as one user turn with
the generation prompt added; without a template the instruction is fed as plain text. The
reply is cleaned to its first non-empty line, without list markers or surrounding quotes
(:func:`clean_caption`); ``raw_text`` keeps what the model wrote.

The pure part (parameters, seeds, fingerprints) is :mod:`diffspec.plan.caption_identity`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from diffspec.errors import StageError
from diffspec.plan.caption_identity import (
    CAPTION_KIND,
    DEFAULT_CAPTION_MODEL,
    DEFAULT_INSTRUCTION,
    CaptionParams,
    CaptionRequest,
    caption_fingerprint,
    caption_requests,
    caption_seed,
    render_instruction,
    text_fingerprint,
)
from diffspec.plan.unit import normalize_prompt
from diffspec.stages.hfload import HFModelRef, load

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CAPTION_KIND",
    "DEFAULT_CAPTION_MODEL",
    "DEFAULT_INSTRUCTION",
    "Caption",
    "CaptionGenerator",
    "CaptionParams",
    "CaptionRequest",
    "caption_fingerprint",
    "caption_requests",
    "caption_seed",
    "clean_caption",
    "render_instruction",
    "text_fingerprint",
]


@dataclass(frozen=True, slots=True)
class Caption:
    """One made caption and everything that decided it."""

    source_text: str
    variation: int
    text: str
    raw_text: str
    seed: int
    fingerprint: str
    model: HFModelRef
    params: CaptionParams
    chat_template: bool  # whether the tokenizer's chat template wrapped the prompt
    new_tokens: int
    seconds: float = field(compare=False, default=0.0)


_LIST_MARKER = re.compile(r"^\s*(?:[-*•]+|\d+[.)]|caption\s*\d*\s*:)\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def clean_caption(raw: str) -> str:
    """The first non-empty line of a reply, without a list marker or surrounding quotes/markdown."""
    for line in raw.splitlines():
        line = _LIST_MARKER.sub("", line).strip().strip("*_").strip()
        if len(line) >= 2 and line[0] in _QUOTES and line[-1] in _QUOTES:
            line = line[1:-1].strip()
        if line:
            return normalize_prompt(line)
    return ""


# --------------------------------------------------------------------------- model part


def _row_sampler(seeds: Sequence[int], params: CaptionParams):
    """A LogitsProcessor that samples each row from its own generator and forces that token.

    ``generate`` runs greedy, so the forced token is what it appends; the usual processors
    from the model's generation config (repetition penalty, bad words, ...) run before this.
    """
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            logits = scores.float()
            if params.temperature == 0:
                chosen = logits.argmax(dim=-1)
            else:
                logits = logits / float(params.temperature)
                if params.top_k:
                    k = min(params.top_k, logits.shape[-1])
                    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if params.top_p < 1.0:
                    ordered, order = torch.sort(logits, descending=True, dim=-1)
                    cum = ordered.softmax(dim=-1).cumsum(dim=-1)
                    drop = cum - ordered.softmax(dim=-1) >= params.top_p  # keeps the token crossing top_p
                    ordered = ordered.masked_fill(drop, float("-inf"))
                    logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
                probs = logits.softmax(dim=-1).cpu()
                chosen = torch.stack(
                    [torch.multinomial(probs[i], 1, generator=self.generators[i])[0] for i in range(probs.shape[0])]
                ).to(scores.device)
            forced = torch.full_like(scores, float("-inf"))
            forced[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
            return forced

    return RowSampler()


class CaptionGenerator:
    """A loaded causal LM that makes :class:`Caption` records, several per ``generate`` call."""

    def __init__(self, model: HFModelRef, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from diffspec.generate.loading import resolve_dtype

        self.ref = model
        self.device = device
        self.tokenizer = load("caption model tokenizer", model, AutoTokenizer.from_pretrained, weights=False)
        self.model = load(
            "caption model", model, AutoModelForCausalLM.from_pretrained, dtype=resolve_dtype(model.dtype, device)
        )
        self.model.to(device).eval()
        self.tokenizer.padding_side = "left"  # generation continues from the right end of each row
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self._torch = torch

    def prompt(self, source_text: str, params: CaptionParams) -> str:
        """The exact text fed to the model for a source text (chat template applied when there is one)."""
        message = render_instruction(params.instruction, normalize_prompt(source_text))
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
            )
        return message

    def _generation_config(self, params: CaptionParams):
        import copy

        config = copy.deepcopy(self.model.generation_config)
        # Greedy over the forced tokens of the row sampler; sampling flags of the checkpoint's
        # config (gemma's top_k=64, top_p=0.95) would otherwise warn or be applied twice.
        config.do_sample = False
        config.num_beams = 1
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.max_new_tokens = params.max_new_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.pad_token_id = self.tokenizer.pad_token_id
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        return config

    def generate(self, requests: Sequence[CaptionRequest], params: CaptionParams, batch_size: int = 8) -> list[Caption]:
        """One :class:`Caption` per request, in request order, ``batch_size`` rows per ``generate`` call."""
        import time

        if batch_size < 1:
            raise StageError(f"captions: batch size must be >= 1, got {batch_size}")
        out: list[Caption] = []
        for start in range(0, len(requests), batch_size):
            batch = list(requests[start : start + batch_size])
            began = time.perf_counter()
            texts, counts = self._generate_batch(batch, params)
            seconds = (time.perf_counter() - began) / max(1, len(batch))
            for request, raw, count in zip(batch, texts, counts):
                out.append(
                    Caption(
                        source_text=request.source_text,
                        variation=request.variation,
                        text=clean_caption(raw),
                        raw_text=raw,
                        seed=request.seed,
                        fingerprint=caption_fingerprint(self.ref, params, request.seed, request.input_fp()),
                        model=self.ref,
                        params=params,
                        chat_template=self.has_chat_template,
                        new_tokens=count,
                        seconds=seconds,
                    )
                )
        return out

    def _generate_batch(self, batch: list[CaptionRequest], params: CaptionParams) -> tuple[list[str], list[int]]:
        from transformers import LogitsProcessorList

        torch = self._torch
        prompts = [self.prompt(r.source_text, params) for r in batch]
        # A chat template writes the BOS itself; adding special tokens again would double it.
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=not self.has_chat_template
        ).to(self.device)
        with torch.inference_mode():
            generated = self.model.generate(
                **encoded,
                generation_config=self._generation_config(params),
                logits_processor=LogitsProcessorList([_row_sampler([r.seed for r in batch], params)]),
            )
        new = generated[:, encoded["input_ids"].shape[1] :]
        texts, counts = [], []
        special = set(self.tokenizer.all_special_ids)
        for row in new.tolist():
            # The reply ends at its first special token (end of turn, EOS, then padding).
            stop = next((i for i, t in enumerate(row) if t in special), len(row))
            counts.append(stop)
            texts.append(self.tokenizer.decode(row[:stop], skip_special_tokens=True))
        return texts, counts
