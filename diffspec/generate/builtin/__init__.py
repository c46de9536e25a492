"""Built-in models that ship inside the package (``builtin:<name>``).

Nothing here imports torch: :mod:`diffspec.generate.builtin.digits` (which does) is
imported only when one of its names is first used.
"""

from __future__ import annotations

import pathlib
from typing import Any

__all__ = ["BUILTIN_MODELS", "builtin_path", "DigitsPipeline", "parse_prompt"]

#: Names usable as ``builtin:<name>``.
BUILTIN_MODELS = ("digits",)


def builtin_path(name: str = "digits") -> pathlib.Path:
    """The folder of the shipped weights of ``builtin:<name>`` (no torch import)."""
    if name not in BUILTIN_MODELS:
        raise FileNotFoundError(f"no built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    path = pathlib.Path(__file__).resolve().parent / name
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"built-in model {name!r} is missing its weights: no {path / 'model_index.json'}")
    return path


def __getattr__(name: str) -> Any:
    if name in ("DigitsPipeline", "parse_prompt"):
        from diffspec.generate.builtin import digits

        return getattr(digits, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
