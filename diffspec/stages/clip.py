"""CLIP score of an image and its prompt, for the ``clip_score`` filter.

``CLIPModel`` with its ``CLIPProcessor`` (tokenizer + ``CLIPImageProcessor`` on the PIL backend:
no torchvision), loaded through ``from_pretrained`` like any checkpoint. The score is the raw
cosine similarity of the L2-normalised image and text embeddings, in [-1, 1]; CLIPScore
(Hessel et al. 2021) reports ``100 * max(cos, 0)`` of the same number. Prompts longer than
CLIP's 77 tokens are truncated, as CLIP itself sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffspec.errors import GenerationError
from diffspec.stages.hfload import IMAGE_BACKEND, HFModelRef, load


class ClipScorer:
    def __init__(self, model: Any, processor: Any, ref: HFModelRef, device: str, dtype: Any) -> None:
        self.model, self.processor, self.ref, self.device, self.dtype = model, processor, ref, device, dtype

    @property
    def source(self) -> str:
        return self.ref.source

    @classmethod
    def load(cls, ref: HFModelRef, device: str = "cpu") -> ClipScorer:
        from transformers import CLIPModel, CLIPProcessor

        from diffspec.generate.loading import resolve_dtype

        processor = load("CLIP processor", ref, CLIPProcessor.from_pretrained, weights=False, backend=IMAGE_BACKEND)
        dtype = resolve_dtype(ref.dtype, device)
        model = load("CLIP model", ref, CLIPModel.from_pretrained, dtype=dtype)
        if not hasattr(model, "get_image_features"):
            raise GenerationError(f"{ref.source!r} is not a CLIP model (no image and text towers)")
        return cls(model.to(device).eval(), processor, ref, device, dtype)

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> list[float]:
        import torch

        inputs = self.processor(
            text=list(texts), images=list(images), return_tensors="pt", padding=True, truncation=True
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model(**inputs)
        image = out.image_embeds.float()
        text = out.text_embeds.float()
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return [float(v) for v in (image * text).sum(dim=-1).tolist()]
