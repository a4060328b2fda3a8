"""Preprocessing steps: the spec's steps as Ray Data preprocessors, plus the two Ray lacks (drop, hash)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from ray.data.preprocessor import Preprocessor, SerializablePreprocessorBase
from ray.data.preprocessors import MinMaxScaler, OneHotEncoder, SimpleImputer, StandardScaler
from ray.data.preprocessors.version_support import SerializablePreprocessor

from rayline.packaged.hashing import fingerprint, hash_bucket, key_for, secret_key
from rayline.spec import PreprocessStep


@SerializablePreprocessor(version=1, identifier="io.rayline.preprocessors.drop_columns")
class DropColumns(SerializablePreprocessorBase):
    """Remove columns (sensitive or useless) so nothing downstream sees them."""

    _is_fittable = False

    def __init__(self, columns: list[str]) -> None:
        super().__init__()
        self._columns = list(columns)

    def _transform_pandas(self, df: pd.DataFrame) -> pd.DataFrame:
        return df.drop(columns=[c for c in self._columns if c in df.columns])

    def _get_serializable_fields(self) -> dict[str, Any]:
        return {"columns": self._columns}

    def _set_serializable_fields(self, fields: dict[str, Any], version: int) -> None:
        self._columns = fields["columns"]


@SerializablePreprocessor(version=2, identifier="io.rayline.preprocessors.hash_buckets")
class HashBuckets(SerializablePreprocessorBase):
    """Replace each value by a one-hot vector of its hash bucket (:func:`rayline.packaged.hashing.hash_bucket`).

    A keyed one holds its key in memory only (Ray Data's tasks get it with the preprocessor): its stored state has
    the key's fingerprint, and a preprocessor restored from that state takes the key from the environment."""

    _is_fittable = False

    def __init__(self, columns: list[str], num_buckets: int, key: bytes | None) -> None:
        super().__init__()
        self._columns = list(columns)
        self._num_buckets = num_buckets
        self._key = key
        self._fingerprint = fingerprint(key) if key is not None else None

    @property
    def key_fingerprint(self) -> str | None:
        """The fingerprint of the key (None: an unkeyed hash)."""
        return self._fingerprint

    def _transform_pandas(self, df: pd.DataFrame) -> pd.DataFrame:
        for column in self._columns:
            codes = np.fromiter((hash_bucket(v, self._num_buckets, self._key) for v in df[column].tolist()),
                                dtype=np.int64, count=len(df))
            one_hot = np.zeros((len(df), self._num_buckets), dtype=np.uint8)
            one_hot[np.arange(len(df)), codes] = 1
            df[column] = list(one_hot)
        return df

    def _get_serializable_fields(self) -> dict[str, Any]:
        return {"columns": self._columns, "num_buckets": self._num_buckets, "key_fingerprint": self._fingerprint}

    def _set_serializable_fields(self, fields: dict[str, Any], version: int) -> None:
        self._columns = fields["columns"]
        self._num_buckets = fields["num_buckets"]
        self._fingerprint = fields["key_fingerprint"]
        self._key = key_for(self._fingerprint) if self._fingerprint is not None else None


def build_step(step: PreprocessStep) -> Preprocessor:
    """The Ray Data preprocessor (unfitted) for one spec step."""
    columns = list(step.columns)
    match step.type:
        case "standard_scale":
            return StandardScaler(columns=columns)
        case "min_max_scale":
            return MinMaxScaler(columns=columns)
        case "one_hot":
            limits = {c: step.max_categories for c in columns} if step.max_categories else None
            return OneHotEncoder(columns=columns, max_categories=limits)
        case "impute":
            return SimpleImputer(columns=columns, strategy=step.strategy, fill_value=step.fill_value)
        case "drop":
            return DropColumns(columns=columns)
        case "hash":
            return HashBuckets(columns=columns, num_buckets=step.num_buckets,
                               key=secret_key() if step.keyed else None)
    raise AssertionError(f"unhandled step {step.type}")
