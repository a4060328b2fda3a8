"""Schema checks run in the driver before any worker starts: every problem is found and named by its spec field,
and all of them are raised together."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from rayline.errors import SpecProblem, raise_problems
from rayline.packaged.hashing import KEY_ENV, KEY_FILE_ENV, HashKeyError, secret_key
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


def check_schema(spec: PipelineSpec, schema: dict[str, Any], earlier: Sequence[SpecProblem] = ()
                 ) -> tuple[list[str], list[PreprocessStep]]:
    """Check label, features and preprocessing columns against ``schema`` (name → type); raise one
    :class:`SpecError` listing ``earlier`` problems (found before the data was opened) and every one found here.

    Returns the raw feature columns (all but the label when ``data.features`` is not set) and the
    preprocessing steps with glob patterns (``pixel_*``) in ``columns`` expanded.
    """
    data = spec.data
    problems = list(earlier)
    available = ", ".join(schema)
    if data.label not in schema:
        problems.append(SpecProblem("data.label", f"label column {data.label!r} not found in {data.source}; columns "
                                                  f"are: {available}"))
    elif data.task == "regression" and not is_numeric(schema[data.label]):
        problems.append(SpecProblem("data.label", f"regression label {data.label!r} is {schema[data.label]}, not "
                                                  "numeric"))
    named = list(data.features) if data.features is not None else [c for c in schema if c != data.label]
    missing = [c for c in named if c not in schema]
    if missing:
        problems.append(SpecProblem("data.features", f"feature columns {missing} not found in {data.source}; "
                                                     f"columns are: {available}"))
    if data.label in named:
        problems.append(SpecProblem("data.features", f"the label {data.label!r} is also listed as a feature"))
    features = [c for c in named if c in schema and c != data.label]
    if not named:
        problems.append(SpecProblem("data.features", "no feature columns"))
    steps = [_expand(step, features, index, problems) for index, step in enumerate(spec.preprocess)]
    encoded = {c for step in steps if step.type in ENCODING_STEPS for c in step.columns}
    problems += [SpecProblem("data.features", f"feature {column!r} is {schema[column]}, not numeric: add a one_hot "
                                              "or hash step for it under preprocess, or drop it")
                 for column in features if column not in encoded and not is_numeric(schema[column])]
    problems += _hash_key_problems(steps)
    raise_problems(problems)
    return features, steps


def _expand(step: PreprocessStep, features: list[str], index: int, problems: list[SpecProblem]) -> PreprocessStep:
    columns: list[str] = []
    unmatched = []
    for pattern in step.columns:
        matches = [c for c in features if fnmatch.fnmatchcase(c, pattern)]
        if not matches:
            unmatched.append(pattern)
        columns += [c for c in matches if c not in columns]
    if unmatched:
        what = ", ".join(map(repr, unmatched))
        problems.append(SpecProblem(f"preprocess.{index}.columns", f"{step.type}: {what} "
                                    f"match{'es' if len(unmatched) == 1 else ''} no feature column"))
    return step.model_copy(update={"columns": columns})


def _hash_key_problems(steps: list[PreprocessStep]) -> list[SpecProblem]:
    """A keyed hash step needs the secret key in the environment."""
    keyed = [index for index, step in enumerate(steps) if step.type == "hash" and step.keyed]
    if not keyed:
        return []
    try:
        if secret_key() is not None:
            return []
        why = f"a keyed hash needs a secret key: set {KEY_ENV} (or {KEY_FILE_ENV}, a file holding it) here and " \
              "where the model is served, or say keyed: false to hash without one (a dictionary of likely values " \
              "then reverses the buckets)"
    except HashKeyError as err:
        why = str(err)
    return [SpecProblem(f"preprocess.{index}.keyed", why) for index in keyed]
