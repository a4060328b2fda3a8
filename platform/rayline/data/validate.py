"""Schema checks run in the driver before any worker starts: each failure names its spec field."""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np
import pyarrow as pa

from rayline.errors import SpecError
from rayline.spec import PipelineSpec, PreprocessStep

ENCODING_STEPS = {"one_hot", "hash", "drop"}


def is_numeric(column_type: Any) -> bool:
    """True for integer, floating, boolean and decimal columns (arrow or numpy types)."""
    if isinstance(column_type, pa.DataType):
        return bool(
            pa.types.is_integer(column_type) or pa.types.is_floating(column_type)
            or pa.types.is_boolean(column_type) or pa.types.is_decimal(column_type)
        )
    try:
        return np.issubdtype(np.dtype(column_type), np.number) or np.dtype(column_type) == np.bool_
    except TypeError:
        return False


def check_schema(spec: PipelineSpec, schema: dict[str, Any]) -> tuple[list[str], list[PreprocessStep]]:
    """Check label, features and preprocessing columns against ``schema`` (name → type).

    Returns the raw feature columns (all but the label when ``data.features`` is not set) and the
    preprocessing steps with glob patterns (``pixel_*``) in ``columns`` expanded.
    """
    data = spec.data
    available = ", ".join(schema)
    if data.label not in schema:
        raise SpecError(f"label column {data.label!r} not found in {data.source}; columns are: {available}",
                        field="data.label")
    if data.task == "regression" and not is_numeric(schema[data.label]):
        raise SpecError(f"regression label {data.label!r} is {schema[data.label]}, not numeric", field="data.label")
    features = list(data.features) if data.features is not None else [c for c in schema if c != data.label]
    missing = [c for c in features if c not in schema]
    if missing:
        raise SpecError(f"feature columns {missing} not found in {data.source}; columns are: {available}",
                        field="data.features")
    if data.label in features:
        raise SpecError(f"the label {data.label!r} is also listed as a feature", field="data.features")
    if not features:
        raise SpecError("no feature columns", field="data.features")
    steps = [_expand(step, features, index) for index, step in enumerate(spec.preprocess)]
    encoded = {c for step in steps if step.type in ENCODING_STEPS for c in step.columns}
    for column in features:
        if column not in encoded and not is_numeric(schema[column]):
            raise SpecError(
                f"feature {column!r} is {schema[column]}, not numeric: add a one_hot or hash step for it "
                "under preprocess, or drop it", field="data.features")
    return features, steps


def _expand(step: PreprocessStep, features: list[str], index: int) -> PreprocessStep:
    columns: list[str] = []
    for pattern in step.columns:
        matches = [c for c in features if fnmatch.fnmatchcase(c, pattern)]
        if not matches:
            raise SpecError(f"{step.type}: {pattern!r} matches no feature column",
                            field=f"preprocess.{index}.columns")
        columns += [c for c in matches if c not in columns]
    return step.model_copy(update={"columns": columns})
