"""Fitted Ray Data preprocessors as plain JSON, so loading a model never unpickles bytes.

Ray's own ``serialize()`` is cloudpickle. This codec keeps Ray's state extraction
(``_get_serializable_fields`` / ``_get_stats``) but writes it as JSON, and restores only
classes on an allowlist.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.data.preprocessor import Preprocessor, SerializablePreprocessorBase
from ray.data.preprocessors import (
    Concatenator,
    LabelEncoder,
    MinMaxScaler,
    OneHotEncoder,
    SimpleImputer,
    StandardScaler,
)
from ray.data.preprocessors.utils import StatComputationPlan

from rayline.data.steps import DropColumns, HashBuckets
from rayline.packaged.state_json import DTYPE, MARKERS, PAIRS, TUPLE, decode

ALLOWED: dict[str, type[SerializablePreprocessorBase]] = {
    cls.get_preprocessor_class_id(): cls
    for cls in (
        StandardScaler, MinMaxScaler, OneHotEncoder, SimpleImputer, LabelEncoder, Concatenator,
        DropColumns, HashBuckets,
    )
}


def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not MARKERS.intersection(value):
            return {k: _encode(v) for k, v in value.items()}
        return {PAIRS: [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {DTYPE: np.dtype(value).name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    raise TypeError(f"cannot store {type(value).__name__} in preprocessor state")


def dump_preprocessor(preprocessor: SerializablePreprocessorBase) -> dict[str, Any]:
    """A fitted preprocessor as a JSON-able dict."""
    class_id = preprocessor.get_preprocessor_class_id()
    if class_id not in ALLOWED:
        raise TypeError(f"{type(preprocessor).__name__} is not a storable preprocessor")
    return {
        "type": class_id,
        "version": preprocessor.get_version(),
        "fields": _encode(preprocessor._get_serializable_fields()),
        "stats": _encode(preprocessor._get_stats()),
    }


def load_preprocessor(state: dict[str, Any]) -> Preprocessor:
    """Rebuild a fitted preprocessor from :func:`dump_preprocessor`'s output (allowlisted classes only)."""
    cls = ALLOWED.get(state["type"])
    if cls is None:
        raise ValueError(f"unknown preprocessor type {state['type']!r}")
    preprocessor = cls.__new__(cls)
    preprocessor._stat_computation_plan = StatComputationPlan()
    preprocessor._set_serializable_fields(fields=decode(state["fields"]), version=state["version"])
    preprocessor._set_stats(stats=decode(state["stats"]))
    return preprocessor
