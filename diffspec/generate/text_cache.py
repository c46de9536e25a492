"""A bounded cache of text embeddings, so a run encodes each distinct prompt once.

A loop over batches calls the pipeline with prompt strings, and the pipeline runs its text
encoders on every prompt and negative prompt of every batch: 240 images from 4 prompts at
batch 8 encode 480 texts where 5 distinct ones would do. The backend asks this cache instead
and hands the pipeline ``prompt_embeds``. An embedding depends only on its text (each text is
encoded alone, padded to the tokenizer's fixed length), so a cached one is the same tensor the
pipeline would compute, and an image never depends on its batch mates.

The bound is in bytes (an SDXL fp16 embedding is ~0.3 MiB, SD 1.5's ~0.1 MiB): past it the
least recently used texts are dropped, so a run with more distinct prompts than fit costs what
it cost before, never more memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_BUDGET_BYTES = 64 << 20


@dataclass(frozen=True)
class TextEmbedding:
    embeds: Any  # torch.Tensor [1, tokens, dim]
    pooled: Any | None  # torch.Tensor [1, dim] for families with a pooled embedding (SDXL), else None

    @property
    def nbytes(self) -> int:
        size = self.embeds.element_size() * self.embeds.nelement()
        if self.pooled is not None:
            size += self.pooled.element_size() * self.pooled.nelement()
        return int(size)


class TextEmbeddingCache:
    def __init__(self, encode: Callable[[str], TextEmbedding], budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self._encode = encode
        self._budget = budget_bytes
        self._entries: OrderedDict[str, TextEmbedding] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> TextEmbedding:
        found = self._entries.get(text)
        if found is not None:
            self._entries.move_to_end(text)
            self.hits += 1
            return found
        self.misses += 1
        made = self._encode(text)
        self._entries[text] = made
        self._bytes += made.nbytes
        while self._bytes > self._budget and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.nbytes
        return made

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries), "bytes": self._bytes}
