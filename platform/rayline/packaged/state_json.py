"""The fitted preprocessing's state as plain JSON, both ways, without Ray: what a preprocessor's fields and
statistics hold (dicts with any keys, tuples, numpy dtypes and scalars) in a form that loads without unpickling."""

from __future__ import annotations

from typing import Any

import numpy as np

PAIRS, TUPLE, DTYPE = "__pairs__", "__tuple__", "__dtype__"
MARKERS = frozenset({PAIRS, TUPLE, DTYPE})  # a dict with one of these keys is stored as pairs, never as an object


def encode(value: Any) -> Any:
    """Python to JSON: a dict whose keys are not all strings (or that uses a marker) → ``__pairs__``, a tuple →
    ``__tuple__``, a dtype → ``__dtype__``, numpy scalars → Python ones. Anything else is refused."""
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not MARKERS.intersection(value):
            return {k: encode(v) for k, v in value.items()}
        return {PAIRS: [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {DTYPE: np.dtype(value).name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    raise TypeError(f"cannot store {type(value).__name__} in preprocessor state")


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
