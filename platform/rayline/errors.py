"""Errors a user can fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations


class RaylineError(Exception):
    """Base class for every error caused by input rather than by a bug."""


class SpecError(RaylineError):
    """A spec, its data or its resource request is invalid.

    ``field`` is the dotted path in the spec (``data.label``); ``file`` is the spec file.
    """

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.file = file

    def __str__(self) -> str:
        prefix = "".join(f"{part}: " for part in (self.file, self.field) if part)
        return f"{prefix}{self.message}"
