"""The fitted preprocessing compiled for inference: numpy operations over arrays precomputed at load time.

Ray Data fits the steps and transforms datasets for training (``data/fitted.py``); a Ray Data preprocessor costs
about 20 ms a call whatever the rows, too much for a request. This module reads the same fitted state (the JSON
the packaged model carries) and applies it with Ray's semantics, importing neither Ray nor ``rayline.data``:

- ``standard_scale``: ``(x - mean) / std`` (population std); a std under 1e-8 (a constant column) is taken as 1,
  so the column becomes ``x - mean``; a column that had no values when fitting gives NaN; NaN stays NaN;
- ``min_max_scale``: ``(x - min) / (max - min)``, the same rules for a range under 1e-8 and for no values;
  serving values outside the fitted range leave [0, 1];
- ``impute``: missing values (None, NaN) become the fitted mean or most frequent value (Ray's pick on a tie), or
  the constant; a fitted state without a value is refused, as Ray refuses to transform with it;
- ``one_hot``: one position per fitted category, in sorted order (with ``max_categories``, Ray kept the most
  frequent ones when fitting); unseen values give all zeros, and so do missing ones (which Ray refuses);
- ``hash``: a one-hot vector of the keyed BLAKE2 bucket of each value's canonical form (``hashing.py``, which
  ``data/steps.py:HashBuckets`` calls too); missing values share a bucket; the key must be in the environment;
- ``drop``: the column is not among the concatenated ones;
- finally the concatenated columns in order, encodings flattened in place, as one float32 vector per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayline.packaged.hashing import hash_bucket, key_for
from rayline.packaged.state_json import decode

EPSILON = 1e-8  # Ray's scalers take a smaller std or range as 1
STANDARD = "io.ray.preprocessors.standard_scaler"
MIN_MAX = "io.ray.preprocessors.min_max_scaler"
IMPUTER = "io.ray.preprocessors.simple_imputer"
ONE_HOT = "io.ray.preprocessors.one_hot_encoder"
CONCAT = "io.ray.preprocessors.concatenator"
LABEL = "io.ray.preprocessors.label_encoder"
DROP = "io.rayline.preprocessors.drop_columns"
HASH = "io.rayline.preprocessors.hash_buckets"
# The state version each preprocessor below is read at (1 where not listed); another one may mean other semantics.
# A version-1 hash (unkeyed BLAKE2 of str(value)) is refused: its buckets differed between training and serving.
VERSIONS = {HASH: 2}
Columns = dict[str, np.ndarray]  # the frame path's working columns: 1-D values, or (rows, width) encodings


@dataclass(frozen=True)
class _Scale:
    """``(x - offset) / divisor``, with one offset and divisor per input column (0 and 1 where the step does not
    apply, which leaves a value bit for bit as it was)."""

    columns: list[str]
    positions: list[int]
    offset: np.ndarray
    divisor: np.ndarray

    @classmethod
    def from_state(cls, type_id: str, fields: dict[str, Any], stats: dict[str, Any],
                   position: dict[str, int]) -> _Scale:
        columns = list(fields["columns"])
        if type_id == STANDARD:
            centres = [stats[f"mean({c})"] for c in columns]
            spreads = [stats[f"std({c})"] for c in columns]
        else:
            centres = [stats[f"min({c})"] for c in columns]
            spreads = [None if low is None or high is None else high - low
                       for low, high in zip(centres, [stats[f"max({c})"] for c in columns], strict=True)]
        positions = [position[c] for c in columns]
        offset, divisor = np.zeros(len(position)), np.ones(len(position))
        for at, centre, spread in zip(positions, centres, spreads, strict=True):
            offset[at] = np.nan if centre is None or spread is None else centre
            divisor[at] = 1.0 if spread is None or spread < EPSILON else spread
        return cls(columns, positions, offset, divisor)

    def block(self, work: np.ndarray) -> None:
        np.subtract(work, self.offset, out=work)
        np.divide(work, self.divisor, out=work)

    def frame(self, columns: Columns) -> None:
        for column, at in zip(self.columns, self.positions, strict=True):
            columns[column] = (_numbers(columns[column]) - self.offset[at]) / self.divisor[at]


@dataclass(frozen=True)
class _Impute:
    """Missing values replaced by each column's value; ``fill`` has them per input column (NaN where the step does
    not apply) when they are all numbers."""

    columns: list[str]
    values: list[Any]
    fill: np.ndarray | None

    @classmethod
    def from_state(cls, fields: dict[str, Any], stats: dict[str, Any], position: dict[str, int]) -> _Impute:
        strategy, columns = fields["strategy"], list(fields["columns"])
        if strategy == "constant":
            values = [fields["fill_value"]] * len(columns)
        elif strategy in ("mean", "most_frequent"):
            values = [stats[f"{strategy}({c})"] for c in columns]
        else:
            raise ValueError(f"unknown imputation strategy {strategy!r}")
        if any(value is None for value in values):
            raise ValueError(f"no fill value for some of {columns}: the training split had no values there")
        fill = None
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            fill = np.full(len(position), np.nan)
            fill[[position[c] for c in columns]] = values
        return cls(columns, values, fill)

    def block(self, work: np.ndarray) -> None:
        np.copyto(work, self.fill, where=np.isnan(work))

    def frame(self, columns: Columns) -> None:
        for column, value in zip(self.columns, self.values, strict=True):
            present = columns[column]
            missing = pd.isna(present)
            if missing.any():
                filled = present.astype(object if isinstance(value, str) else present.dtype)
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

    @property
    def widths(self) -> dict[str, int]:
        return {column: len(index) for column, index in self.categories.items()}

    def frame(self, columns: Columns) -> None:
        for column, index in self.categories.items():
            values = columns[column]
            codes = index.get_indexer(pd.Index(values, dtype=object if values.dtype == object else None))
            columns[column] = _one_hot(codes, len(index))


@dataclass(frozen=True)
class _Hash:
    """Each column → a one-hot vector of its (keyed) hash bucket (:mod:`rayline.packaged.hashing`)."""

    columns: list[str]
    buckets: int
    key: bytes | None

    @classmethod
    def from_state(cls, fields: dict[str, Any]) -> _Hash:
        recorded = fields["key_fingerprint"]
        return cls(list(fields["columns"]), int(fields["num_buckets"]), key_for(recorded) if recorded else None)

    @property
    def widths(self) -> dict[str, int]:
        return dict.fromkeys(self.columns, self.buckets)

    def frame(self, columns: Columns) -> None:
        for column in self.columns:
            values = columns[column].tolist()  # Python scalars, as iterating the pandas column gives them
            codes = np.fromiter((hash_bucket(v, self.buckets, self.key) for v in values), dtype=np.int64,
                                count=len(values))
            columns[column] = _one_hot(codes, self.buckets)


Step = _Scale | _Impute | _OneHot | _Hash


def _compile_step(type_id: str, fields: dict[str, Any], stats: dict[str, Any], position: dict[str, int]) -> Step:
    if type_id in (STANDARD, MIN_MAX):
        return _Scale.from_state(type_id, fields, stats, position)
    if type_id == IMPUTER:
        return _Impute.from_state(fields, stats, position)
    if type_id == ONE_HOT:
        return _OneHot.from_state(fields, stats)
    if type_id == HASH:
        return _Hash.from_state(fields)
    raise ValueError(f"unknown preprocessing step {type_id!r}")


def _state(step: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A stored preprocessor's type, fields and stats, once its version is known."""
    version = VERSIONS.get(step["type"], 1)
    if step["version"] != version:
        raise ValueError(f"{step['type']} version {step['version']} is not supported (only {version})")
    return step["type"], decode(step["fields"]), decode(step["stats"])


def _one_hot(codes: np.ndarray, width: int) -> np.ndarray:
    encoded = np.zeros((len(codes), width), dtype=np.float32)
    rows = np.flatnonzero(codes >= 0)
    encoded[rows, codes[rows]] = 1.0
    return encoded


def _numbers(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float64) if values.dtype != object else pd.to_numeric(values).astype(np.float64)


class CompiledPreprocessor:
    """The fitted steps of one packaged model, ready to transform raw rows into the model's float32 features."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.input_columns: list[str] = list(state["input_columns"])
        self.label: str = state["label"]
        self.task: str = state["task"]
        self.num_features: int = int(state["num_features"])
        position = {column: i for i, column in enumerate(self.input_columns)}
        self._steps: list[Step] = []
        concatenated: list[str] | None = None
        for stored in state["feature_steps"]:
            type_id, fields, stats = _state(stored)
            if type_id == CONCAT:
                concatenated = self._concatenated(fields)
            elif type_id != DROP:  # a dropped column is not among the concatenated ones: nothing to do
                self._steps.append(_compile_step(type_id, fields, stats, position))
        if concatenated is None:
            raise ValueError("the state has no concatenation into features")
        self._layout = self._lay_out(concatenated)
        self.imputed_columns: frozenset[str] = frozenset(
            c for step in self._steps if isinstance(step, _Impute) for c in step.columns)
        # missing values are imputed, or hashed to a bucket of their own
        self.nullable_columns: frozenset[str] = self.imputed_columns | {
            c for step in self._steps if isinstance(step, _Hash) for c in step.columns}
        self.numeric_only: bool = all(
            isinstance(step, _Scale) or (isinstance(step, _Impute) and step.fill is not None) for step in self._steps)
        self._gather = None if concatenated == self.input_columns else np.array(
            [position[c] for c in concatenated], dtype=np.intp)
        self.classes: list[Any] | None = self._classes(state["label_encoder"])
        self._labels = None if self.classes is None else np.fromiter(self.classes, dtype=object,
                                                                     count=len(self.classes))

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
        (rows, num_features) float32 features, with two vectorised operations per step. ``block`` is not changed."""
        if not self.numeric_only:
            raise ValueError("transform_block is for models whose steps are all numeric; use transform_frame")
        work = np.array(block, dtype=np.float64)  # a copy: the steps work in place
        if work.ndim != 2 or work.shape[1] != len(self.input_columns):
            raise ValueError(f"expected a (rows, {len(self.input_columns)}) block, got shape {work.shape}")
        for step in self._steps:
            step.block(work)
        return (work if self._gather is None else work[:, self._gather]).astype(np.float32)

    def transform_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw input columns (any steps) to the (rows, num_features) float32 features."""
        if self.numeric_only:
            same = frame.columns.tolist() == self.input_columns  # the usual request: no columns to pick
            return self.transform_block((frame if same else frame[self.input_columns]).to_numpy(dtype=np.float64))
        columns = {c: frame[c].to_numpy() for c in self.input_columns}
        for step in self._steps:
            step.frame(columns)
        rows = len(frame)
        features = np.empty((rows, self.num_features), dtype=np.float32)
        for column, start, width in self._layout:
            features[:, start:start + width] = columns[column].reshape(rows, width)
        return features

    def decode(self, indices: np.ndarray) -> list[Any]:
        """Class indices back to label values."""
        if self._labels is None:
            raise ValueError("decode() is for classification")
        return self._labels[np.asarray(indices)].tolist()

    def _concatenated(self, fields: dict[str, Any]) -> list[str]:
        if not fields.get("flatten") or fields["dtype"] != np.float32:
            raise ValueError("features must be concatenated flat, as float32")
        return list(fields["columns"])

    def _lay_out(self, concatenated: list[str]) -> list[tuple[str, int, int]]:
        """(column, first feature, width) of each concatenated column; the widths must add up to num_features."""
        widths = dict.fromkeys(concatenated, 1)
        for step in self._steps:
            if isinstance(step, _OneHot | _Hash):
                widths.update(step.widths)
        starts = np.cumsum([0, *(widths[c] for c in concatenated)])
        if starts[-1] != self.num_features:
            raise ValueError(f"the steps give {starts[-1]} features, the state says {self.num_features}")
        return [(c, int(start), widths[c]) for c, start in zip(concatenated, starts[:-1], strict=True)]

    def _classes(self, encoder: dict[str, Any] | None) -> list[Any] | None:
        if encoder is None:
            return None
        type_id, _, stats = _state(encoder)
        if type_id != LABEL:
            raise ValueError(f"unknown label encoder {type_id!r}")
        vocabulary = stats[f"unique_values({self.label})"]
        return [value for value, _ in sorted(vocabulary.items(), key=lambda kv: kv[1])]
