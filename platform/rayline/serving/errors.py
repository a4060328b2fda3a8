"""Client errors: every one becomes a 4xx JSON body ``{"error": ..., "detail": ...}``, and the replica stays healthy."""

from __future__ import annotations

from typing import Any

from rayline.inference.errors import BadRows, EmptyBatch, RowsRefused, TooManyRows

STATUS: dict[type[RowsRefused], int] = {EmptyBatch: 400, TooManyRows: 422, BadRows: 422}


class InputError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail

    @classmethod
    def of(cls, refused: RowsRefused) -> InputError:
        """The response for rows the model's schema refused."""
        return cls(STATUS[type(refused)], refused.error, refused.detail)

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail}
