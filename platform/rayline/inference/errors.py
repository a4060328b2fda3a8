"""Rows a model cannot take, refused before they reach it. What a refusal becomes (an HTTP status, a failed
batch job) is the caller's business: ``serving/errors.py`` maps these to 4xx responses."""

from __future__ import annotations

from typing import Any


class RowsRefused(Exception):
    """Rows refused: ``error`` says why in a line, ``detail`` (JSON-able) what exactly."""

    def __init__(self, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


class EmptyBatch(RowsRefused):
    """No rows at all."""


class TooManyRows(RowsRefused):
    """More rows than the model takes at once."""


class BadRows(RowsRefused):
    """Wrong or duplicate columns, or values of the wrong type, infinite, or missing where nothing imputes them."""
