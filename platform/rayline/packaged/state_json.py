"""Decoding the fitted preprocessing's JSON state (``data/state_codec.py`` writes it) without Ray."""

from __future__ import annotations

from typing import Any

import numpy as np


def decode(value: Any) -> Any:
    """JSON back to Python: ``__pairs__`` → dict with any keys, ``__tuple__`` → tuple, ``__dtype__`` → dtype."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__pairs__" in value:
        return {_hashable(decode(k)): decode(v) for k, v in value["__pairs__"]}
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__dtype__" in value:
        return np.dtype(value["__dtype__"])
    return {k: decode(v) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
