"""The fitted preprocessing compiled for inference: numpy operations over arrays precomputed at load time.

Ray Data fits the steps and transforms datasets for training (``data/fitted.py``); a Ray Data preprocessor costs
about 20 ms a call whatever the rows, too much for a request. This module reads the same fitted state (the JSON
the packaged model carries) and applies it with the same semantics, importing neither Ray nor ``rayline.data``:

- ``standard_scale``: ``(x - mean) / std``, a std under 1e-8 taken as 1; no fitted stats → NaN;
- ``min_max_scale``: ``(x - min) / (max - min)``, a range under 1e-8 taken as 1; no fitted stats → NaN;
- ``impute``: missing values filled with the fitted mean or most frequent value, or the constant;
- ``one_hot``: one position per fitted category (``max_categories`` was applied when fitting); unseen and
  missing values give all zeros;
- ``hash``: a one-hot vector of the value's BLAKE2 bucket (``str(value)``, as ``data/steps.py:HashBuckets``);
- ``drop``: the column is not in the output;
- finally the kept columns in order, vectors flattened in place, as one float32 vector per row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayline.packaged.state_json import decode

EPSILON = 1e-8  # Ray's scalers treat a smaller std or range as 1
STANDARD, MIN_MAX, IMPUTER, ONE_HOT, CONCAT, DROP, HASH = (
    "io.ray.preprocessors.standard_scaler", "io.ray.preprocessors.min_max_scaler",
    "io.ray.preprocessors.simple_imputer", "io.ray.preprocessors.one_hot_encoder",
    "io.ray.preprocessors.concatenator", "io.rayline.preprocessors.drop_columns",
    "io.rayline.preprocessors.hash_buckets")
Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class _Scale:
    """``(x - offset) / divisor`` per column (NaN offset: the column had no values to fit on)."""

    columns: list[str]
    offset: np.ndarray
    divisor: np.ndarray

    @classmethod
    def from_state(cls, type_id: str, fields: dict[str, Any], stats: dict[str, Any]) -> _Scale:
        columns = fields["columns"]
        if type_id == STANDARD:
            pairs = [(stats[f"mean({c})"], stats[f"std({c})"]) for c in columns]
        else:
            pairs = [(stats[f"min({c})"], None if stats[f"max({c})"] is None or stats[f"min({c})"] is None
                      else stats[f"max({c})"] - stats[f"min({c})"]) for c in columns]
        offset = np.array([np.nan if o is None or d is None else o for o, d in pairs], dtype=np.float64)
        divisor = np.array([1.0 if d is None or d < EPSILON else d for _, d in pairs], dtype=np.float64)
        return cls(columns, offset, divisor)

    def block(self, block: np.ndarray, positions: np.ndarray) -> None:
        block[:, positions] = (block[:, positions] - self.offset) / self.divisor

    def frame(self, columns: Columns) -> None:
        for column, offset, divisor in zip(self.columns, self.offset, self.divisor, strict=True):
            columns[column] = (_numbers(columns[column]) - offset) / divisor


@dataclass(frozen=True)
class _Impute:
    """Missing values (None, NaN) replaced by the fitted or constant value of each column."""

    columns: list[str]
    values: list[Any]

    @classmethod
    def from_state(cls, fields: dict[str, Any], stats: dict[str, Any]) -> _Impute:
        strategy, columns = fields["strategy"], fields["columns"]
        if strategy == "constant":
            return cls(columns, [fields["fill_value"]] * len(columns))
        if strategy not in ("mean", "most_frequent"):
            raise ValueError(f"unknown imputation strategy {strategy!r}")
        return cls(columns, [stats[f"{strategy}({c})"] for c in columns])

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.values)

    def block(self, block: np.ndarray, positions: np.ndarray) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        part = block[:, positions]
        block[:, positions] = np.where(np.isnan(part), values, part)

    def frame(self, columns: Columns) -> None:
        for column, value in zip(self.columns, self.values, strict=True):
            present = columns[column]
            missing = pd.isna(present)
            if missing.any():
                filled = present.astype(object if isinstance(value, str) else present.dtype, copy=True)
                filled[missing] = value
                columns[column] = filled


@dataclass(frozen=True)
class _OneHot:
    """Each column → a 0/1 vector over its fitted categories (unseen or missing → all zeros)."""

    categories: dict[str, pd.Index]

    @classmethod
    def from_state(cls, fields: dict[str, Any], stats: dict[str, Any]) -> _OneHot:
        categories = {}
        for column in fields["columns"]:
            vocabulary = stats[f"unique_values({column})"]
            categories[column] = pd.Index([value for value, _ in sorted(vocabulary.items(), key=lambda kv: kv[1])])
        return cls(categories)

    def frame(self, columns: Columns) -> None:
        for column, index in self.categories.items():
            values = columns[column]
            codes = index.get_indexer(pd.Index(values, dtype=object if values.dtype == object else None))
            columns[column] = _one_hot(codes, len(index))


@dataclass(frozen=True)
class _Hash:
    """Each column → a one-hot vector of the BLAKE2 bucket of ``str(value)``."""

    columns: list[str]
    buckets: int

    def frame(self, columns: Columns) -> None:
        for column in self.columns:
            codes = np.fromiter((self._bucket(v) for v in columns[column]), dtype=np.int64,
                                count=len(columns[column]))
            columns[column] = _one_hot(codes, self.buckets)

    def _bucket(self, value: Any) -> int:
        digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.buckets


def _one_hot(codes: np.ndarray, width: int) -> np.ndarray:
    encoded = np.zeros((len(codes), width), dtype=np.float32)
    rows = np.flatnonzero(codes >= 0)
    encoded[rows, codes[rows]] = 1.0
    return encoded


def _numbers(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float64) if values.dtype != object else pd.to_numeric(values).astype(np.float64)


Step = _Scale | _Impute | _OneHot | _Hash


class CompiledPreprocessor:
    """The fitted steps of one packaged model, ready to transform raw rows into the model's float32 features."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.input_columns: list[str] = list(state["input_columns"])
        self.label: str = state["label"]
        self.task: str = state["task"]
        self.num_features: int = int(state["num_features"])
        self.steps: list[Step] = []
        self.output_columns: list[str] = list(self.input_columns)
        imputed: set[str] = set()
        for step in state["feature_steps"]:
            type_id, fields, stats = step["type"], decode(step["fields"]), decode(step["stats"])
            if type_id in (STANDARD, MIN_MAX):
                self.steps.append(_Scale.from_state(type_id, fields, stats))
            elif type_id == IMPUTER:
                self.steps.append(_Impute.from_state(fields, stats))
                imputed.update(fields["columns"])
            elif type_id == ONE_HOT:
                self.steps.append(_OneHot.from_state(fields, stats))
            elif type_id == HASH:
                self.steps.append(_Hash(list(fields["columns"]), int(fields["num_buckets"])))
            elif type_id == CONCAT:
                self.output_columns = list(fields["columns"])
            elif type_id != DROP:  # dropped columns are simply not among the concatenated ones
                raise ValueError(f"unknown preprocessing step {type_id!r}")
        self.imputed_columns = frozenset(imputed)
        encoder = state.get("label_encoder")
        if encoder is None:
            self.classes: list[Any] | None = None
        else:
            vocabulary = decode(encoder["stats"])[f"unique_values({self.label})"]
            self.classes = [value for value, _ in sorted(vocabulary.items(), key=lambda kv: kv[1])]
        self.numeric_only = all(isinstance(s, _Scale) or (isinstance(s, _Impute) and s.numeric) for s in self.steps)
        position = {column: i for i, column in enumerate(self.input_columns)}
        if self.numeric_only:  # where each step's columns and the kept ones sit in a block
            self._positions = [np.array([position[c] for c in step.columns], dtype=np.intp) for step in self.steps]
            self._kept = np.array([position[c] for c in self.output_columns], dtype=np.intp)

    @classmethod
    def from_json(cls, text: str) -> CompiledPreprocessor:
        """Compile the state ``FittedPreprocessor.to_json()`` wrote (plain JSON: nothing is unpickled)."""
        return cls(json.loads(text))

    @property
    def num_outputs(self) -> int:
        """Model output width: number of classes, or 1 for regression."""
        return len(self.classes) if self.classes is not None else 1

    def transform_block(self, block: np.ndarray) -> np.ndarray:
        """Numeric-only models: a float64 (rows, input columns) block, in :attr:`input_columns` order, to the
        (rows, num_features) float32 features, with a few vectorised operations per step."""
        if not self.numeric_only:
            raise ValueError("transform_block is for models whose steps are all numeric; use transform_frame")
        work = np.array(block, dtype=np.float64)  # a copy: request blocks may be read-only views
        for step, positions in zip(self.steps, self._positions, strict=True):
            step.block(work, positions)
        return work[:, self._kept].astype(np.float32)

    def transform_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw input columns (any steps) to the (rows, num_features) float32 features."""
        if self.numeric_only:
            return self.transform_block(frame[self.input_columns].to_numpy(dtype=np.float64))
        columns = {c: frame[c].to_numpy() for c in self.input_columns}
        for step in self.steps:
            step.frame(columns)
        parts = [np.asarray(columns[c], dtype=np.float32).reshape(len(frame), -1) for c in self.output_columns]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0), dtype=np.float32)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices back to label values."""
        if self.classes is None:
            raise ValueError("decode() is for classification")
        return np.asarray(self.classes, dtype=object)[indices]
