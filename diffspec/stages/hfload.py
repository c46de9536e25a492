"""Loading transformers models for the stages, the way a user's checkpoint loads.

``from_pretrained(source, revision=..., use_safetensors=True, trust_remote_code=False)`` with a hub
id or a local folder; every failure becomes a :class:`GenerationError` naming the model and what
to do (the same messages as the diffusion loader, :mod:`diffspec.generate.loading`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diffspec.errors import GenerationError
from diffspec.plan.stage_identity import IMAGE_BACKEND, HFModelRef

__all__ = ["IMAGE_BACKEND", "HFModelRef", "load", "quiet_loading"]


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
