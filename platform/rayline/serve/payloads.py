"""Request bodies of the three protocols, turned into one pandas frame of raw input columns.

- rayline v1 and MLflow scoring: ``instances`` (records or row lists), ``inputs`` (column → values),
  ``dataframe_split`` and ``dataframe_records`` (MLflow's ``/invocations``);
- Open Inference Protocol v2 (KServe, Triton): one named tensor per input column.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from rayline.serve.errors import InputError

SCORING_KEYS = ("instances", "inputs", "dataframe_split", "dataframe_records")


def frame_from_scoring(payload: Any, columns: list[str]) -> pd.DataFrame:
    """A frame from a v1 / MLflow scoring payload (exactly one of :data:`SCORING_KEYS`)."""
    if not isinstance(payload, dict):
        raise InputError(400, "the body must be a JSON object", {"expected_keys": list(SCORING_KEYS)})
    present = [key for key in SCORING_KEYS if key in payload]
    if len(present) != 1:
        raise InputError(400, "give exactly one of " + ", ".join(SCORING_KEYS), {"found": sorted(payload)})
    key = present[0]
    value = payload[key]
    try:
        if key == "dataframe_split":
            return pd.DataFrame(value["data"], columns=value["columns"])
        if key == "inputs" and isinstance(value, dict):
            return pd.DataFrame(value)
        if isinstance(value, list) and value and all(isinstance(row, list) for row in value):
            return pd.DataFrame(value, columns=columns)  # positional rows, in the signature's column order
        if isinstance(value, list) and all(isinstance(row, dict) for row in value):
            return pd.DataFrame.from_records(value)
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise InputError(400, f"malformed {key}", str(err)) from None
    raise InputError(400, f"malformed {key}: expected records, row lists or columns", {"field": key})


class InferInput(BaseModel):
    """One OIP v2 input tensor: here, one column."""

    model_config = ConfigDict(extra="ignore")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    """OIP v2 ``POST /v2/models/{name}/infer`` body."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP64", "INT64", "BYTES"]
    data: list[Any]


def frame_from_infer(request: InferRequest) -> pd.DataFrame:
    """One column per input tensor; each tensor must hold one value per row (shape [N] or [N, 1])."""
    columns: dict[str, list[Any]] = {}
    for tensor in request.inputs:
        flat = np.asarray(tensor.data, dtype=object).reshape(-1)
        rows = tensor.shape[0] if tensor.shape else 0
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or flat.size != rows:
            raise InputError(400, f"input {tensor.name!r} must have shape [N] or [N, 1] with N values",
                             {"input": tensor.name, "shape": tensor.shape, "values": int(flat.size)})
        columns[tensor.name] = list(flat)
    if len({len(values) for values in columns.values()}) > 1:
        raise InputError(400, "all inputs must have the same number of rows",
                         {name: len(values) for name, values in columns.items()})
    return pd.DataFrame(columns)


def infer_outputs(predictions: pd.DataFrame) -> list[InferOutput]:
    """Prediction columns as OIP v2 output tensors."""
    outputs = []
    for name in predictions.columns:
        values = predictions[name]
        if pd.api.types.is_float_dtype(values):
            datatype, data = "FP64", values.tolist()
        elif pd.api.types.is_integer_dtype(values):
            datatype, data = "INT64", values.tolist()
        else:
            datatype, data = "BYTES", [str(v) for v in values]
        outputs.append(InferOutput(name=name, shape=[len(values)], datatype=datatype, data=data))
    return outputs
