"""Errors a user can fix: the CLI prints them without a traceback, one line per problem."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple


class RaylineError(Exception):
    """Base class for every error caused by input rather than by a bug."""


class SpecProblem(NamedTuple):
    """One thing wrong in a spec: the dotted path of the field (``train.epochs``) and what is wrong."""

    field: str | None
    message: str


class SpecError(RaylineError):
    """A spec, its data or its resource request is invalid.

    ``field`` is the dotted path in the spec (``data.label``); ``file`` is the spec file.
    ``field`` and ``message`` describe the first problem; ``more`` holds any further ones,
    and ``problems`` lists them all. ``str()`` prints one ``file: field: message`` line per problem.
    """

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None,
                 more: Iterable[SpecProblem] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.file = file
        self.more = tuple(more)

    @property
    def problems(self) -> tuple[SpecProblem, ...]:
        """Every problem found, the first (``field``, ``message``) included."""
        return (SpecProblem(self.field, self.message), *self.more)

    def __str__(self) -> str:
        return "\n".join(
            "".join(f"{part}: " for part in (self.file, problem.field) if part) + problem.message
            for problem in self.problems
        )


def raise_problems(problems: Sequence[SpecProblem]) -> None:
    """Raise one :class:`SpecError` listing every problem, if there are any."""
    if problems:
        first, *more = problems
        raise SpecError(first.message, field=first.field, more=more)
