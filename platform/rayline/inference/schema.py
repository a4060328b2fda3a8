"""Checking request rows against the model's input signature before they reach the model.

Numeric models take a float64 block (rows by signature columns) checked with a few vectorised numpy calls;
models with string columns take a pandas frame."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from rayline.inference.errors import BadRows, EmptyBatch, TooManyRows

NUMERIC_KINDS = {"double", "float", "long", "integer"}


@dataclass(frozen=True)
class InputSchema:
    """Column → MLflow type (``double``, ``long``, ``string``, ...); ``nullable`` columns are imputed by the model;
    ``numeric_model``: the model's preprocessing takes a float64 block (no categorical steps)."""

    columns: dict[str, str]
    nullable: frozenset[str]
    max_rows: int
    numeric_model: bool = False

    @cached_property
    def numeric(self) -> bool:
        """Whether requests can travel as one float64 block: every column numeric, the preprocessing too."""
        return self.numeric_model and all(kind in NUMERIC_KINDS for kind in self.columns.values())

    @cached_property
    def names(self) -> list[str]:
        """The signature's columns, in order."""
        return list(self.columns)

    @cached_property
    def _strict(self) -> np.ndarray:
        return np.array([c not in self.nullable for c in self.columns], dtype=bool)

    def check_count(self, rows: int) -> None:
        """Refuse an empty batch, or one over ``max_rows``."""
        if rows == 0:
            raise EmptyBatch("empty batch: send at least one row")
        if rows > self.max_rows:
            raise TooManyRows(f"too many rows: {rows} > {self.max_rows}", {"rows": rows})

    def check_block(self, block: np.ndarray) -> np.ndarray:
        """A float64 (rows, columns) block in signature order, checked for size, Inf and unimputed NaN."""
        self.check_count(len(block))
        self._finite(block, self.names, self._strict)
        return block

    def check(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return a frame with exactly the signature's columns, numeric ones as float64; else raise a RowsRefused."""
        self.check_count(len(frame))
        if frame.columns.has_duplicates:
            duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
            raise BadRows("duplicate columns", {"duplicated": duplicated})
        missing = [c for c in self.columns if c not in frame.columns]
        unknown = [str(c) for c in frame.columns if c not in self.columns]
        if missing or unknown:
            raise BadRows("wrong columns", {"missing": missing, "unknown": unknown,
                                                    "expected": self.names})
        dtypes = frame.dtypes.to_dict()
        typed = [c for c, kind in self.columns.items() if kind in NUMERIC_KINDS
                 and is_numeric_dtype(dtypes[c]) and not is_bool_dtype(dtypes[c])]
        block = frame[typed].to_numpy(dtype=np.float64)  # the common case: numbers, checked as one block
        self._finite(block, typed, np.array([c not in self.nullable for c in typed], dtype=bool))
        checked = pd.DataFrame(block, columns=typed)
        others = {column: self._column(frame[column], column, kind).reset_index(drop=True)
                  for column, kind in self.columns.items() if column not in checked.columns}
        if not others:  # `typed` follows the signature's order
            return checked
        return checked.assign(**others)[self.names]

    @staticmethod
    def _finite(block: np.ndarray, columns: list[str], strict: np.ndarray) -> None:
        """Raise 422 naming the first column that holds Inf, or NaN where the model does not impute."""
        if np.isfinite(block).all():
            return
        for position in np.flatnonzero(np.isinf(block).any(axis=0))[:1]:
            raise BadRows(f"column {columns[position]!r} holds Inf", {"field": columns[position]})
        for position in np.flatnonzero(np.isnan(block).any(axis=0) & strict)[:1]:
            column = columns[position]
            raise BadRows(f"column {column!r} holds NaN or null, and the model does not impute it",
                             {"field": column})

    def _column(self, values: pd.Series, column: str, kind: str) -> pd.Series:
        if kind in NUMERIC_KINDS:
            if values.map(lambda v: isinstance(v, bool | str | list | dict)).any():
                raise BadRows(f"column {column!r} must be numeric", {"field": column, "type": kind})
            try:
                numbers = pd.to_numeric(values, errors="coerce").astype("float64")
            except OverflowError:  # an integer beyond float range
                raise BadRows(f"column {column!r} holds a number beyond float range",
                                 {"field": column, "type": kind}) from None
            bad = numbers.isna() & values.notna()
            if bad.any():
                raise BadRows(f"column {column!r} must be numeric", {"field": column, "type": kind})
            self._finite(numbers.to_numpy()[:, None], [column], np.array([column not in self.nullable]))
            return numbers
        if kind == "boolean":
            if values.map(lambda v: not _absent(v) and not isinstance(v, bool | np.bool_)).any():
                raise BadRows(f"column {column!r} must hold booleans", {"field": column, "type": kind})
        elif values.map(lambda v: not _absent(v) and not isinstance(v, str)).any():
            raise BadRows(f"column {column!r} must hold strings", {"field": column, "type": kind})
        if values.isna().any() and column not in self.nullable:
            raise BadRows(f"column {column!r} holds null, and the model does not impute it",
                             {"field": column})
        return values.astype(object)


def _absent(value: object) -> bool:
    """None, or what pandas puts where a value is missing (NaN, ``pd.NA``)."""
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)
