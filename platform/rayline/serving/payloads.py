"""Request bodies of the three protocols, turned into checked rows: one float64 block for numeric models
(no pandas per request), else a pandas frame of raw input columns.

- rayline v1 and MLflow scoring: ``instances`` (records or row lists), ``inputs`` (column → values),
  ``dataframe_split`` and ``dataframe_records`` (MLflow's ``/invocations``);
- Open Inference Protocol v2 (KServe, Triton): one ``[N, F]`` tensor, or one tensor per input column.

Every protocol ends in :class:`~rayline.inference.schema.InputSchema`'s checks, whose refusals become 4xx
responses here. A body that is not a plain numeric table takes the frame path, whose checks name the offending
column.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache, wraps
from operator import itemgetter
from typing import Any, ParamSpec

import numpy as np
import pandas as pd

from rayline.inference.errors import RowsRefused
from rayline.inference.schema import InputSchema
from rayline.serving.errors import InputError
from rayline.serving.oip import Tensor

SCORING_KEYS = ("instances", "inputs", "dataframe_split", "dataframe_records")
NUMERIC_KINDS = "fiu"
INT64_LIMIT = 2**63
Rows = np.ndarray | pd.DataFrame
P = ParamSpec("P")


def _refusals_as_responses(parse: Callable[P, Rows]) -> Callable[P, Rows]:
    """``parse``, whose schema refusals become the 4xx responses :data:`rayline.serving.errors.STATUS` says."""
    @wraps(parse)
    def parsed(*args: P.args, **kwargs: P.kwargs) -> Rows:
        try:
            return parse(*args, **kwargs)
        except RowsRefused as refused:
            raise InputError.of(refused) from None

    return parsed


def parse_json(body: bytes) -> Any:
    """The decoded JSON body; anything undecodable (bad UTF-8, syntax, nesting too deep) is a 400. Integers
    beyond int64 become floats (``inf`` past float64's range), which the schema checks refuse by column."""
    try:
        return json.loads(body, parse_int=_json_int)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(400, "malformed JSON", str(err)[:200]) from None


def _json_int(text: str) -> int | float:
    value = int(text)
    return value if -INT64_LIMIT <= value < INT64_LIMIT else float(text)


@_refusals_as_responses
def rows_from_scoring(payload: Any, schema: InputSchema) -> Rows:
    """Checked rows from a v1 / MLflow scoring payload (exactly one of :data:`SCORING_KEYS`)."""
    if not isinstance(payload, dict):
        raise InputError(400, "the body must be a JSON object", {"expected_keys": list(SCORING_KEYS)})
    present = [key for key in SCORING_KEYS if key in payload]
    if len(present) != 1:
        raise InputError(400, "give exactly one of " + ", ".join(SCORING_KEYS), {"found": sorted(payload)[:20]})
    key = present[0]
    value = payload[key]
    if schema.numeric:
        block = _numeric_block(key, value, schema)
        if block is not None:
            return schema.check_block(block)
    return _checked(schema.check(_frame(key, value, schema.names)), schema)


@_refusals_as_responses
def rows_from_tensors(tensors: list[Tensor], schema: InputSchema) -> Rows:
    """Checked rows from OIP v2 inputs: one ``[N, F]`` tensor (numeric models), or one tensor per column."""
    names = [tensor.name for tensor in tensors]
    if schema.numeric and len(tensors) == 1 and len(tensors[0].shape) == 2 and names[0] not in schema.columns:
        return schema.check_block(_tensor_block(tensors[0], len(schema.columns)))
    unknown, missing = sorted(set(names) - set(schema.columns)), [c for c in schema.columns if c not in names]
    if unknown or missing:
        raise InputError(422, "send one [N, F] tensor or one tensor per column", {
            "missing": missing, "unknown": unknown, "columns": schema.names})
    columns = {}
    for tensor in tensors:
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InputError(422, f"input {tensor.name!r} must have shape [N] or [N, 1]",
                             {"input": tensor.name, "shape": list(tensor.shape)})
        columns[tensor.name] = tensor.data.reshape(-1)
    if len({len(values) for values in columns.values()}) > 1:
        raise InputError(422, "all inputs must have the same number of rows",
                         {name: len(values) for name, values in columns.items()})
    if schema.numeric and all(values.dtype.kind in NUMERIC_KINDS for values in columns.values()):
        return schema.check_block(np.column_stack(itemgetter(*schema.names)(columns)).astype(np.float64))
    frame = pd.DataFrame({name: _decoded(values) for name, values in columns.items()})
    return _checked(schema.check(frame), schema)


def _checked(frame: pd.DataFrame, schema: InputSchema) -> Rows:
    return frame.to_numpy(dtype=np.float64) if schema.numeric else frame


def _decoded(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values], dtype=object)
    return values


def _tensor_block(tensor: Tensor, width: int) -> np.ndarray:
    if tensor.shape[1] != width or tensor.data.dtype.kind not in NUMERIC_KINDS:
        raise InputError(422, f"input {tensor.name!r} must be a numeric [N, {width}] tensor",
                         {"input": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype})
    return tensor.data.astype(np.float64, copy=False)


def _numeric_block(key: str, value: Any, schema: InputSchema) -> np.ndarray | None:
    """The rows as a float64 block in signature order, or None when the body is not a plain numeric table
    (the frame path then says precisely what is wrong)."""
    names = schema.names
    order = None
    try:
        if key == "dataframe_split":
            order = _column_order(tuple(names), tuple(value["columns"]))
            table = np.asarray(value["data"])
        elif key == "inputs" and isinstance(value, dict):
            columns = itemgetter(*names)(value) if len(value) == len(names) else None
            table = np.asarray(columns if len(names) > 1 else [columns]).T
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            getter = itemgetter(*names)
            if set(map(len, value)) != {len(names)}:
                return None
            table = np.asarray(list(map(getter, value)) if len(names) > 1 else [[getter(row)] for row in value])
        elif isinstance(value, list):
            table = np.asarray(value)
        else:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    if table.ndim != 2 or table.shape[1] != len(names) or table.dtype.kind not in NUMERIC_KINDS:
        return None
    table = table.astype(np.float64, copy=False)
    return table if order is None else table[:, order]


@lru_cache(maxsize=64)
def _column_order(expected: tuple[str, ...], given: tuple[Any, ...]) -> np.ndarray | None:
    """Positions of the expected columns in the request's; None when they are already in order."""
    if given == expected:
        return None
    if len(given) != len(expected) or set(given) != set(expected):
        raise KeyError("not the signature's columns")
    position = {name: index for index, name in enumerate(given)}
    return np.array([position[name] for name in expected])


def _frame(key: str, value: Any, columns: list[str]) -> pd.DataFrame:
    """A frame from any accepted scoring layout; anything pandas cannot read is a 400 naming the key."""
    try:
        if key == "dataframe_split":
            if not isinstance(value, dict) or not isinstance(value.get("columns"), list):
                raise InputError(400, "malformed dataframe_split: expected {columns: [...], data: [[...]]}")
            return pd.DataFrame(value.get("data"), columns=value["columns"])
        if key == "inputs" and isinstance(value, dict):
            return pd.DataFrame(value)
        if isinstance(value, list) and value and all(isinstance(row, list) for row in value):
            return pd.DataFrame(value, columns=columns)  # positional rows, in the signature's column order
        if isinstance(value, list) and all(isinstance(row, dict) for row in value):
            return pd.DataFrame.from_records(value)
    except InputError:
        raise
    except Exception as err:  # pandas raises many types for malformed tables: all of them are the client's
        raise InputError(400, f"malformed {key}", str(err)[:200]) from None
    raise InputError(400, f"malformed {key}: expected records, row lists or columns", {"field": key})
