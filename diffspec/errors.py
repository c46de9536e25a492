"""The one exception root of diffspec and its few subclasses.

Every error a user can cause is a :class:`DiffspecError` with a message they can act on;
the CLI prints it without a traceback and exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass


class DiffspecError(Exception):
    """Root of every error diffspec raises on purpose."""


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a source file, 1-based like editors show it."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a spec, where it is and what was expected."""

    position: Position | None
    message: str
    path: str = ""

    def __str__(self) -> str:
        where = str(self.position) if self.position else "<spec>"
        return f"{where}: {self.message}"


class SpecError(DiffspecError):
    """A spec is invalid. Carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(
            problems,
            key=lambda p: (
                p.position.file if p.position else "",
                p.position.line if p.position else 0,
                p.position.column if p.position else 0,
                p.message,
            ),
        )
        count = len(self.problems)
        head = f"{count} error{'s' if count != 1 else ''} in spec"
        super().__init__(head + "\n" + "\n".join(str(p) for p in self.problems))


class PlanError(DiffspecError):
    """A plan cannot be made, read or applied (e.g. a stale plan file)."""


class CatalogError(DiffspecError):
    """The catalog cannot be read, written or queried as asked."""


class CatalogDamaged(CatalogError):
    """A catalog file cannot be read: truncated, overwritten with garbage, or of the wrong shape.

    ``parts`` are the damaged files. Nothing reads around them silently: `diffspec check SPEC
    --repair` quarantines them and rebuilds their rows from the image files."""

    def __init__(self, message: str, parts: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.parts = parts


class LockError(CatalogError):
    """Another run holds the output root."""


class GenerationError(DiffspecError):
    """A model cannot be loaded or run as the spec asks."""


class StageError(DiffspecError):
    """A post-generation stage cannot run as configured."""


class ExportError(DiffspecError):
    """The catalog's images cannot be exported as asked (unknown format, missing file, no labels)."""


class ReviewError(DiffspecError):
    """The review server could not start, or a decision could not be recorded."""


class DiskFullError(DiffspecError):
    """The output root's filesystem ran out of space (or quota); what is recorded is whole."""
