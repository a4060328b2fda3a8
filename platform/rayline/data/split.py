"""Deterministic, streaming train/validation/test split by a keyed hash of each row's content."""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray.data

from rayline.spec.pipeline import SplitSpec

SPLIT_COLUMN = "__split__"
SPLITS = ("train", "validation", "test")


def _assign(batch: pd.DataFrame, split: SplitSpec) -> pd.DataFrame:
    key = f"rayline{split.seed:09d}"[-16:]
    hashes = pd.util.hash_pandas_object(batch, index=False, hash_key=key).to_numpy()
    unit = (hashes % np.uint64(1_000_000)).astype(np.float64) / 1_000_000
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
