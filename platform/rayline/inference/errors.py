"""Client errors: every one becomes a 4xx JSON body ``{"error": ..., "detail": ...}``."""

from __future__ import annotations

from typing import Any


class InputError(Exception):
    """A request the server refuses; the replica stays healthy."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail}
