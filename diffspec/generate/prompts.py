"""Prompt weighting in A1111 syntax, parsed without torch.

Syntax (as in AUTOMATIC1111's web UI):

* ``(words)`` — weight x1.1; nested ``((words))`` x1.21
* ``[words]`` — weight /1.1
* ``(words:1.3)`` — weight x1.3
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` — literal brackets

A prompt *uses weighting* when it has an unescaped bracket. Weighted prompts are embedded
through compel (sd and sdxl only) from the parsed fragments; :func:`a1111_to_compel` shows the
same prompt in compel's own syntax (``(words)1.3``). Unbalanced brackets are an error, not
silently repaired.
"""

from __future__ import annotations

import re

from diffspec.errors import GenerationError

ROUND_WEIGHT = 1.1
SQUARE_WEIGHT = 1 / 1.1

_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])
  | (?P<explicit>:\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\))
  | (?P<open_round>\()
  | (?P<close_round>\))
  | (?P<open_square>\[)
  | (?P<close_square>\])
  | (?P<text>[^\\()\[\]:]+|[\\:])
    """,
    re.VERBOSE,
)


def has_weighting(text: str) -> bool:
    """True when ``text`` has an unescaped ``(``, ``)``, ``[`` or ``]``."""
    # walk escapes properly: a bracket preceded by an odd number of backslashes is literal
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "()[]":
            return True
        i += 1
    return False


def parse_a1111(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` fragments, merging neighbours of equal weight.

    Raises GenerationError on unbalanced or mismatched brackets.
    """
    fragments: list[list] = []  # [text, weight]
    stack: list[tuple[str, int, int]] = []  # (kind, start index in fragments, column)
    for match in _TOKEN.finditer(text):
        if match.group("escape"):
            fragments.append([match.group("escape")[1], 1.0])
        elif match.group("explicit"):
            if not stack or stack[-1][0] != "(":
                # a ":1.3)" with no "(" open: the ")" is unbalanced
                raise _unbalanced(text, ")", match.end() - 1)
            _, start, _ = stack.pop()
            weight = float(match.group("number"))
            for frag in fragments[start:]:
                frag[1] *= weight
        elif match.group("open_round"):
            stack.append(("(", len(fragments), match.start()))
        elif match.group("open_square"):
            stack.append(("[", len(fragments), match.start()))
        elif match.group("close_round") or match.group("close_square"):
            closing = match.group(0)
            opening = "(" if closing == ")" else "["
            if not stack or stack[-1][0] != opening:
                raise _unbalanced(text, closing, match.start())
            _, start, _ = stack.pop()
            weight = ROUND_WEIGHT if closing == ")" else SQUARE_WEIGHT
            for frag in fragments[start:]:
                frag[1] *= weight
        else:
            fragments.append([match.group(0), 1.0])
    if stack:
        opening, _, column = stack[-1]
        raise _unbalanced(text, opening, column)
    merged: list[tuple[str, float]] = []
    for piece, weight in fragments:
        weight = round(weight, 6)
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return [(piece, weight) for piece, weight in merged if piece]


def _unbalanced(text: str, bracket: str, column: int) -> GenerationError:
    return GenerationError(
        f"unbalanced {bracket!r} at character {column + 1} of prompt {text!r}; prompt weighting "
        "uses (words), [words] and (words:1.3) — write literal brackets as \\( \\) \\[ \\]"
    )


def plain_text(text: str) -> str:
    """The prompt with weighting syntax removed and escapes resolved."""
    return "".join(piece for piece, _ in parse_a1111(text))


def unescape(text: str) -> str:
    """Resolve ``\\(`` style escapes of a prompt without weighting syntax."""
    return re.sub(r"\\([()\[\]\\])", r"\1", text)


def is_weighted(text: str) -> bool:
    """True when the prompt has a fragment whose weight is not 1."""
    return has_weighting(text) and any(weight != 1.0 for _, weight in parse_a1111(text))


def _format_weight(weight: float) -> str:
    return f"{weight:.4f}".rstrip("0").rstrip(".")


def a1111_to_compel(text: str) -> str:
    """The prompt in compel syntax, e.g. ``(masterpiece:1.3), a cat`` → ``(masterpiece)1.3, a cat``.

    For display and logs; embeddings are built from the parsed fragments directly, which
    avoids compel's own escaping rules.
    """
    out = []
    for piece, weight in parse_a1111(text):
        escaped = piece.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").replace('"', '\\"')
        if weight == 1.0:
            out.append(escaped)
        else:
            lead = escaped[: len(escaped) - len(escaped.lstrip())]
            trail = escaped[len(escaped.rstrip()) :]
            core = escaped.strip()
            out.append(f"{lead}({core}){_format_weight(weight)}{trail}" if core else escaped)
    return "".join(out)
