"""The compiled (numpy) preprocessing against Ray Data's, step type by step type and in chains: encodings equal,
floats within 1e-6 relative, on frames with NaNs, None, unseen categories and extreme values."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import ray.data
from pydantic import TypeAdapter

import rayline
from rayline.data import FittedPreprocessor
from rayline.spec import PreprocessStep

ROWS = 400
STEPS = TypeAdapter(list[PreprocessStep])


def _frame(seed: int, rows: int = ROWS, unseen: bool = False) -> pd.DataFrame:
    """Numbers with NaNs and extreme values, a constant column, and categorical columns with None."""
    rng = np.random.default_rng(seed)
    a = rng.normal(3.0, 2.0, rows)
    a[rng.random(rows) < 0.1] = np.nan
    b = rng.uniform(-1e6, 1e6, rows)
    b[:3] = [1e30, -1e30, 1e-30]
    colors = np.array(["red", "green", "blue", "teal", "gold"] + (["violet", "black"] if unseen else []),
                      dtype=object)
    color = rng.choice(colors, rows, p=None).astype(object)
    color[rng.random(rows) < 0.08] = None
    city = rng.choice(np.array([f"c{i}" for i in range(12 if not unseen else 20)], dtype=object), rows)
    size = rng.integers(0, 6, rows).astype(np.float64)
    return pd.DataFrame({"a": a, "b": b, "flat": np.full(rows, 7.0), "color": color, "city": city, "size": size,
                         "y": rng.choice(np.array(["no", "yes", "maybe"], dtype=object), rows)})


CHAINS = {
    "standard_scale": [{"type": "standard_scale", "columns": ["a", "b", "flat"]}],
    "min_max_scale": [{"type": "min_max_scale", "columns": ["a", "b", "flat", "size"]}],
    "impute mean, then scale": [{"type": "impute", "columns": ["a"], "strategy": "mean"},
                                {"type": "standard_scale", "columns": ["a", "b"]}],
    "impute most_frequent (numbers)": [{"type": "impute", "columns": ["a", "size"], "strategy": "most_frequent"}],
    "impute constant (number), then min_max": [{"type": "impute", "columns": ["a"], "strategy": "constant",
                                                "fill_value": -5.0},
                                               {"type": "min_max_scale", "columns": ["a", "size"]}],
    "impute most_frequent (strings), then one_hot": [
        {"type": "impute", "columns": ["color"], "strategy": "most_frequent"},
        {"type": "one_hot", "columns": ["color", "city"]}],
    "impute constant (string), one_hot with max_categories": [
        {"type": "impute", "columns": ["color"], "strategy": "constant", "fill_value": "none"},
        {"type": "one_hot", "columns": ["color", "city"], "max_categories": 3}],
    "one_hot on numbers": [{"type": "impute", "columns": ["a"], "strategy": "mean"},
                           {"type": "one_hot", "columns": ["size"]}],
    "hash, min_max and drop": [{"type": "drop", "columns": ["city"]},
                               {"type": "hash", "columns": ["color"], "num_buckets": 8},
                               {"type": "impute", "columns": ["a"], "strategy": "mean"},
                               {"type": "min_max_scale", "columns": ["a", "b"]}],
}
FEATURES = {
    "standard_scale": ["a", "b", "flat"],
    "min_max_scale": ["a", "b", "flat", "size"],
    "impute mean, then scale": ["a", "b"],
    "impute most_frequent (numbers)": ["a", "size"],
    "impute constant (number), then min_max": ["a", "size"],
    "impute most_frequent (strings), then one_hot": ["color", "city", "b"],
    "impute constant (string), one_hot with max_categories": ["color", "city"],
    "one_hot on numbers": ["a", "size"],
    "hash, min_max and drop": ["city", "color", "a", "b"],
}


def _fit(chain: str) -> FittedPreprocessor:
    train = ray.data.from_pandas(_frame(0))
    return FittedPreprocessor.fit(train, train, STEPS.validate_python(CHAINS[chain]), FEATURES[chain], "y",
                                  "classification")


def _close(compiled: np.ndarray, reference: np.ndarray) -> None:
    """Equal NaN positions; elsewhere within 1e-6 relative (plus 1e-12 absolute: float32 of values near 0)."""
    assert compiled.dtype == np.float32 and compiled.shape == reference.shape
    np.testing.assert_array_equal(np.isnan(compiled), np.isnan(reference))
    np.testing.assert_allclose(compiled, reference, rtol=1e-6, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("chain", list(CHAINS))
def test_compiled_matches_ray_data(platform: rayline.Platform, chain: str) -> None:
    fitted = _fit(chain)
    compiled = fitted.compile()
    assert compiled.num_features == fitted.num_features and compiled.input_columns == fitted.input_columns
    frame = _frame(1, unseen=True)
    if any(s["type"] == "one_hot" for s in CHAINS[chain]) and "impute" not in str(CHAINS[chain]):
        frame["color"] = frame["color"].fillna("red")  # Ray refuses nulls in a one-hot column
    if chain == "impute most_frequent (strings), then one_hot":
        frame.loc[0, "city"] = "c5"
    rows = frame[fitted.input_columns]
    reference = fitted.transform_frame(rows)
    _close(compiled.transform_frame(rows), reference)
    if compiled.numeric_only:
        _close(compiled.transform_block(rows.to_numpy(np.float64)), reference)
    one_hot = [s for s in CHAINS[chain] if s["type"] in ("one_hot", "hash")]
    if one_hot:  # encodings: exactly 0 or 1, unseen categories all zeros
        assert np.isin(compiled.transform_frame(rows), [0.0, 1.0]).sum() > 0


def test_unseen_categories_encode_as_all_zeros(platform: rayline.Platform) -> None:
    fitted = _fit("impute constant (string), one_hot with max_categories")
    rows = pd.DataFrame({"color": ["violet", "red", None], "city": ["c19", "c1", "c99"]})
    compiled = fitted.compile().transform_frame(rows)
    color_width = compiled.shape[1] - 3  # city keeps its 3 most frequent categories
    assert compiled[0, :color_width].sum() == 0 and compiled[2, color_width:].sum() == 0
    assert compiled[1, :color_width].sum() == 1
    _close(compiled, fitted.transform_frame(rows))


def test_decode_matches_the_label_encoder(platform: rayline.Platform) -> None:
    fitted = _fit("standard_scale")
    indices = np.array([2, 0, 1, 1])
    assert list(fitted.compile().decode(indices)) == list(fitted.decode(indices))
    assert fitted.compile().classes == fitted.classes and len(fitted.classes) == 3


def test_numeric_only_is_said_and_refused_otherwise(platform: rayline.Platform) -> None:
    assert _fit("impute mean, then scale").compile().numeric_only
    categorical = _fit("hash, min_max and drop").compile()
    assert not categorical.numeric_only
    with pytest.raises(ValueError, match="transform_frame"):
        categorical.transform_block(np.zeros((1, 3)))


def test_compiled_state_loads_without_ray(platform: rayline.Platform, tmp_path) -> None:
    fitted = _fit("impute most_frequent (strings), then one_hot")
    (tmp_path / "state.json").write_text(fitted.to_json())
    rows = _frame(2)[fitted.input_columns].head(20)
    rows.to_pickle(tmp_path / "rows.pkl")  # written and read by this test only
    script = """
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is not installed here")
sys.meta_path.insert(0, NoRay())
import numpy as np, pandas as pd
from rayline.packaged.preprocessing import CompiledPreprocessor
compiled = CompiledPreprocessor.from_json(open(sys.argv[1]).read())
np.save(sys.argv[3], compiled.transform_frame(pd.read_pickle(sys.argv[2])))
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.json"), str(tmp_path / "rows.pkl"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _close(np.load(tmp_path / "out.npy"), fitted.transform_frame(rows))
