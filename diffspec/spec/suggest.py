"""Did-you-mean suggestions for misspelled keys and names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'' or "; did you mean 'x'?" — ready to append to a message."""
    match = closest(word, choices)
    return f"; did you mean {match!r}?" if match else ""
