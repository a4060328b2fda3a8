"""Deterministic, streaming train/validation/test split by a keyed hash of each row's content."""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray.data

from rayline.spec.pipeline import SplitSpec

SPLIT_COLUMN = "__split__"
SPLITS = ("train", "validation", "test")
UNLABELLED = "unlabelled"  # the split value of a row whose label is null: in no split (refused, or dropped)
_MASK64 = 2**64 - 1  # seeds are taken modulo 2**64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64s (wrapping arithmetic): a bijection that spreads every input bit."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def row_units(batch: pd.DataFrame, seed: int) -> np.ndarray:
    """A number in [0, 1) per row, from the row's content and ``seed`` only (not its position or batch).

    Rows are hashed without a key (``hash_key`` reaches object columns only), then each hash is mixed with a
    constant derived from the seed, so every column type, numeric included, depends on the seed."""
    hashes = pd.util.hash_pandas_object(batch, index=False).to_numpy(dtype=np.uint64)
    key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))[0]
    return (_splitmix64(hashes ^ key) >> np.uint64(11)).astype(np.float64) / 2.0**53


def _assign(batch: pd.DataFrame, split: SplitSpec, label: str) -> pd.DataFrame:
    unit = row_units(batch, split.seed)
    batch[SPLIT_COLUMN] = np.where(batch[label].isna(), UNLABELLED, np.where(
        unit < split.test, "test", np.where(unit < split.test + split.validation, "validation", "train")))
    return batch


def _keep(batch: pd.DataFrame, name: str) -> pd.DataFrame:
    return batch[batch[SPLIT_COLUMN] == name].drop(columns=[SPLIT_COLUMN])


def _labelled(batch: pd.DataFrame) -> pd.DataFrame:
    return batch[batch[SPLIT_COLUMN] != UNLABELLED]


def assign_splits(dataset: ray.data.Dataset, split: SplitSpec, label: str) -> ray.data.Dataset:
    """Add the split column: a row's split depends only on its content and the seed, not on block layout; a row
    whose ``label`` is null goes to :data:`UNLABELLED` instead."""
    return dataset.map_batches(_assign, fn_kwargs={"split": split, "label": label}, batch_format="pandas")


def labelled_rows(assigned: ray.data.Dataset) -> ray.data.Dataset:
    """The rows of every split, with the split column: those whose label is not null (lazy, streaming)."""
    return assigned.map_batches(_labelled, batch_format="pandas")


def select_split(assigned: ray.data.Dataset, name: str) -> ray.data.Dataset:
    """The rows of one split, without the split column (lazy, streaming)."""
    return assigned.map_batches(_keep, fn_kwargs={"name": name}, batch_format="pandas")
