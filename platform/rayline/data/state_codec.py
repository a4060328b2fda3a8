"""Fitted Ray Data preprocessors as plain JSON, so loading a model never unpickles bytes.

Ray's own ``serialize()`` is cloudpickle. This codec keeps Ray's state extraction
(``_get_serializable_fields`` / ``_get_stats``) but writes it as JSON, and restores only
classes on an allowlist.
"""

from __future__ import annotations

from typing import Any

from ray.data.preprocessor import Preprocessor, SerializablePreprocessorBase
from ray.data.preprocessors import (
    Concatenator,
    LabelEncoder,
    MinMaxScaler,
    OneHotEncoder,
    SimpleImputer,
    StandardScaler,
)

from rayline import raycompat
from rayline.data.steps import DropColumns, HashBuckets
from rayline.packaged.state_json import decode, encode

ALLOWED: dict[str, type[SerializablePreprocessorBase]] = {
    cls.get_preprocessor_class_id(): cls
    for cls in (
        StandardScaler, MinMaxScaler, OneHotEncoder, SimpleImputer, LabelEncoder, Concatenator,
        DropColumns, HashBuckets,
    )
}


def dump_preprocessor(preprocessor: SerializablePreprocessorBase) -> dict[str, Any]:
    """A fitted preprocessor as a JSON-able dict."""
    class_id = preprocessor.get_preprocessor_class_id()
    if class_id not in ALLOWED:
        raise TypeError(f"{type(preprocessor).__name__} is not a storable preprocessor")
    fields, stats = raycompat.preprocessor_state(preprocessor)
    return {
        "type": class_id,
        "version": preprocessor.get_version(),
        "fields": encode(fields),
        "stats": encode(stats),
    }


def load_preprocessor(state: dict[str, Any]) -> Preprocessor:
    """Rebuild a fitted preprocessor from :func:`dump_preprocessor`'s output (allowlisted classes only)."""
    cls = ALLOWED.get(state["type"])
    if cls is None:
        raise ValueError(f"unknown preprocessor type {state['type']!r}")
    return raycompat.restore_preprocessor(cls, decode(state["fields"]), decode(state["stats"]), state["version"])
