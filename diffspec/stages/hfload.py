"""Loading transformers models for the stages, the way a user's checkpoint loads.

``from_pretrained(source, revision=..., use_safetensors=True, trust_remote_code=False)`` with a hub
id or a local folder; every failure becomes a :class:`GenerationError` naming the model and what
to do (the same messages as the diffusion loader, :mod:`diffspec.generate.loading`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffspec.errors import GenerationError
from diffspec.tables.sources import looks_like_path

#: transformers picks the torchvision image processors when torchvision is installed and the PIL
#: ones otherwise; they do not give identical pixels. The stages always ask for PIL, so a mask
#: does not change with whether torchvision happens to be installed (and it need not be).
IMAGE_BACKEND = "pil"


@dataclass(frozen=True, slots=True)
class HFModelRef:
    """A transformers checkpoint a stage loads: everything that decides its weights and dtype."""

    source: str
    revision: str | None = None
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU (see generate.loading.resolve_dtype)
    use_safetensors: bool = True
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.source or not self.source.strip():
            raise GenerationError("a stage model needs a `source` (a hub id or a local folder)")

    @property
    def is_local(self) -> bool:
        return looks_like_path(self.source)

    def identity(self) -> dict[str, Any]:
        """The fields that change outputs, for fingerprints (a local folder has no revision)."""
        return {
            "source": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "use_safetensors": self.use_safetensors,
            "trust_remote_code": self.trust_remote_code,
        }

    def location(self) -> str:
        return str(Path(self.source).expanduser()) if self.is_local else self.source

    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision and not self.is_local:
            kwargs["revision"] = self.revision
        return kwargs


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bars while loading (restored afterwards)."""
    from transformers.utils import logging as tlogging

    was = tlogging.is_progress_bar_enabled()
    tlogging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tlogging.enable_progress_bar()


def load(what: str, ref: HFModelRef, loader: Callable[..., Any], weights: bool = True, **extra: Any) -> Any:
    """``loader(ref.location(), **kwargs)`` with the ref's revision and safety flags.

    ``weights`` adds ``use_safetensors`` (models only; tokenizers and processors have no weights).
    """
    from diffspec.generate.loading import (
        _load_error,  # one wording for every model load error
    )

    if ref.is_local and not Path(ref.source).expanduser().is_dir():
        raise GenerationError(
            f"{what} source {ref.source!r} is not a folder; use a hub id or a folder made with `save_pretrained`"
        )
    kwargs = {**ref.kwargs(), **extra}
    if weights:
        kwargs["use_safetensors"] = ref.use_safetensors
    try:
        with quiet_loading():
            return loader(ref.location(), **kwargs)
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:
        raise _load_error(what, ref.source, exc, hub=not ref.is_local) from exc
