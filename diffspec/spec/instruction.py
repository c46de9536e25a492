"""The captions stage's instruction template: ``{text}`` is the source text, nothing else."""

from __future__ import annotations

import string

from diffspec.errors import StageError

_PLACEHOLDERS = ("text",)


def render_instruction(instruction: str, text: str) -> str:
    """The instruction with ``{text}`` filled in; ``{{``/``}}`` are literal braces.

    An unknown placeholder, or none at all (the model would never see the source text), is a
    StageError naming it.
    """
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(instruction) if name is not None]
    except ValueError as exc:
        raise StageError(f"captions: `instruction` is not a valid template ({exc}): {instruction!r}") from exc
    unknown = sorted({f for f in fields if f not in _PLACEHOLDERS})
    if unknown:
        raise StageError(
            f"captions: `instruction` uses unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
            f"the only one is {{text}} (the source text; one caption is made per generation)"
        )
    if "text" not in fields:
        raise StageError("captions: `instruction` must contain {text}, where the source text goes")
    return instruction.format(text=text)
