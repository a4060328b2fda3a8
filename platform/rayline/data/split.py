"""Deterministic, streaming train/validation/test split by a keyed hash of each row's content."""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray.data

from rayline.spec.pipeline import SplitSpec

SPLIT_COLUMN = "__split__"
SPLITS = ("train", "validation", "test")
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


def _assign(batch: pd.DataFrame, split: SplitSpec) -> pd.DataFrame:
    unit = row_units(batch, split.seed)
    batch[SPLIT_COLUMN] = np.where(unit < split.test, "test",
                                   np.where(unit < split.test + split.validation, "validation", "train"))
    return batch


def _keep(batch: pd.DataFrame, name: str) -> pd.DataFrame:
    return batch[batch[SPLIT_COLUMN] == name].drop(columns=[SPLIT_COLUMN])


def assign_splits(dataset: ray.data.Dataset, split: SplitSpec) -> ray.data.Dataset:
    """Add the split column: a row's split depends only on its content and the seed, not on block layout."""
    return dataset.map_batches(_assign, fn_kwargs={"split": split}, batch_format="pandas")


def _count(batch: pd.DataFrame) -> pd.DataFrame:
    counts = batch[SPLIT_COLUMN].value_counts()
    return pd.DataFrame({name: [int(counts.get(name, 0))] for name in SPLITS})


def count_splits(assigned: ray.data.Dataset) -> dict[str, int]:
    """Rows per split, in one pass over the data (a count per block, summed here: no shuffle)."""
    per_block = assigned.map_batches(_count, batch_format="pandas", batch_size=None).to_pandas()
    return {name: int(per_block[name].sum()) if len(per_block) else 0 for name in SPLITS}


def select_split(assigned: ray.data.Dataset, name: str) -> ray.data.Dataset:
    """The rows of one split, without the split column (lazy, streaming)."""
    return assigned.map_batches(_keep, fn_kwargs={"name": name}, batch_format="pandas")
