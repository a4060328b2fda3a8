"""Decoding the fitted preprocessing's JSON state (``data/state_codec.py`` writes it) without Ray."""

from __future__ import annotations

from typing import Any

import numpy as np

PAIRS, TUPLE, DTYPE = "__pairs__", "__tuple__", "__dtype__"
MARKERS = frozenset({PAIRS, TUPLE, DTYPE})  # a dict with one of these keys is stored as pairs, never as an object


def decode(value: Any) -> Any:
    """JSON back to Python: ``__pairs__`` → dict with any keys, ``__tuple__`` → tuple, ``__dtype__`` → dtype."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if PAIRS in value:
        return {_hashable(decode(k)): decode(v) for k, v in value[PAIRS]}
    if TUPLE in value:
        return tuple(decode(v) for v in value[TUPLE])
    if DTYPE in value:
        return np.dtype(value[DTYPE])
    return {k: decode(v) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
