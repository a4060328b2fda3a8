"""The split is keyed by the seed for every column type, a row's split depends only on its content, and a row
without a label goes to no split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rayline.data.split import SPLIT_COLUMN, UNLABELLED, _assign
from rayline.spec.pipeline import SplitSpec

ROWS = 20_000


def _numeric() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x0": rng.normal(size=ROWS), "x1": rng.integers(0, 16, ROWS), "label": np.arange(ROWS) % 10})


def _mixed() -> pd.DataFrame:
    return pd.DataFrame({"color": [f"c{i}" for i in range(ROWS)], "size": np.arange(ROWS, dtype=np.float32)})


def _splits(frame: pd.DataFrame, seed: int) -> np.ndarray:
    spec = SplitSpec(validation=0.1, test=0.2, seed=seed)
    return _assign(frame.copy(), spec, label=frame.columns[-1])[SPLIT_COLUMN].to_numpy()


@pytest.mark.parametrize("make", [_numeric, _mixed], ids=["numeric", "with-object-column"])
def test_the_seed_changes_the_split_and_fractions_hold(make) -> None:
    frame = make()
    first, again, other = _splits(frame, 1), _splits(frame, 1), _splits(frame, 2)
    assert (first == again).all()
    assert (first != other).mean() > 0.3  # independent splits disagree on about 46% of rows
    for assigned in (first, other):
        fractions = pd.Series(assigned).value_counts(normalize=True)
        assert fractions["test"] == pytest.approx(0.2, abs=0.015)
        assert fractions["validation"] == pytest.approx(0.1, abs=0.015)


@pytest.mark.parametrize("make", [_numeric, _mixed], ids=["numeric", "with-object-column"])
def test_a_rows_split_does_not_depend_on_batching_or_order(make) -> None:
    frame = make()
    whole = _splits(frame, 7)
    batched = np.concatenate([_splits(frame.iloc[start:start + 777], 7) for start in range(0, ROWS, 777)])
    assert (batched == whole).all()
    order = np.random.default_rng(3).permutation(ROWS)
    shuffled = frame.iloc[order].reset_index(drop=True)
    assert (_splits(shuffled, 7) == whole[order]).all()


def test_a_row_without_a_label_goes_to_no_split() -> None:
    frame = _numeric().astype({"label": "float64"})
    frame.loc[[3, 17], "label"] = np.nan
    assigned = _splits(frame, 7)
    assert list(np.flatnonzero(assigned == UNLABELLED)) == [3, 17]
