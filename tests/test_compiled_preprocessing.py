"""The compiled (numpy) preprocessing against Ray Data's, step type by step type and in chains.

Ray Data fits every state here (``FittedPreprocessor.fit``). On frames with NaNs, None, unseen categories, values
far outside the fitted range, extreme (±1e30) and tiny (1e-30) values and constant columns, the compiled transform
must give the encodings exactly and every float within 1e-6 relative, with NaN where Ray has NaN.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ray.data
from pydantic import TypeAdapter
from ray.data.preprocessors import OneHotEncoder

import rayline
from rayline.data import FittedPreprocessor
from rayline.data.steps import HashBuckets
from rayline.packaged.preprocessing import CompiledPreprocessor
from rayline.spec import PreprocessStep

ROWS = 400
STEPS = TypeAdapter(list[PreprocessStep])
NUMBERS = ["a", "b", "flat", "almost_flat", "tiny", "empty"]


def _frame(seed: int, serving: bool = False) -> pd.DataFrame:
    """Training rows (``serving=False``) or rows to transform: the latter add unseen categories and values outside
    the fitted ranges."""
    rng = np.random.default_rng(seed)
    a = rng.normal(3.0, 2.0, ROWS)
    a[rng.random(ROWS) < 0.1] = np.nan
    b = rng.uniform(-1e6, 1e6, ROWS)
    b[:4] = [1e30, -1e30, 1e-30, -1e-30]
    flat = np.full(ROWS, 7.0)  # std and range 0: Ray divides by 1
    almost_flat = 1.0 + rng.normal(0.0, 1e-10, ROWS)  # std and range under 1e-8: also divided by 1
    tiny = rng.normal(0.0, 1e-30, ROWS)
    colors = ["red", "green", "blue", "teal", "gold"] + (["violet", "black"] if serving else [])
    color = rng.choice(np.array(colors, dtype=object), ROWS)
    color[rng.random(ROWS) < 0.08] = None
    city = rng.choice(np.array([f"c{i}" for i in range(20 if serving else 12)], dtype=object), ROWS)
    size = rng.integers(0, 8 if serving else 6, ROWS).astype(np.float64)
    count = rng.integers(-3, 9 if serving else 4, ROWS)
    share = np.round(rng.random(ROWS), 2).astype(np.float32)  # hashed: str() of a float32 as pandas yields it
    empty = np.full(ROWS, np.nan)  # no values to fit on: Ray gives NaN whatever the value
    if serving:
        empty = rng.normal(0.0, 1.0, ROWS)
        flat[::3] = 8.0
        almost_flat[::5] = 2.0
        tiny[::7] = 1e-25
    return pd.DataFrame({"a": a, "b": b, "flat": flat, "almost_flat": almost_flat, "tiny": tiny,
                         "empty": empty, "color": color, "city": city, "size": size, "count": count,
                         "share": share, "y": rng.choice(np.array(["no", "yes", "maybe"], dtype=object), ROWS)})


# name → (steps, feature columns)
CHAINS: dict[str, tuple[list[dict[str, Any]], list[str]]] = {
    "standard_scale": ([{"type": "standard_scale", "columns": NUMBERS}], NUMBERS),
    "min_max_scale": ([{"type": "min_max_scale", "columns": [*NUMBERS, "size", "count"]}],
                      [*NUMBERS, "size", "count"]),
    "impute mean": ([{"type": "impute", "columns": ["a"]}], ["a", "b"]),
    "impute most_frequent (numbers, every count 1 in a)": (
        [{"type": "impute", "columns": ["a", "size"], "strategy": "most_frequent"}], ["a", "size"]),
    "impute constant (number)": ([{"type": "impute", "columns": ["a"], "strategy": "constant", "fill_value": -5.5}],
                                 ["a", "tiny"]),
    "one_hot (strings and ints)": ([{"type": "one_hot", "columns": ["city", "count"]}], ["city", "count", "b"]),
    "one_hot with max_categories": ([{"type": "one_hot", "columns": ["city"], "max_categories": 3}],
                                    ["size", "city"]),
    "drop": ([{"type": "drop", "columns": ["city", "color"]}], ["city", "a", "color", "b"]),
    "hash (strings with None, ints, float32)": (
        [{"type": "hash", "columns": ["color", "count", "share"], "num_buckets": 8}], ["color", "b", "count", "share"]),
    "impute mean, standard_scale": ([{"type": "impute", "columns": ["a"]},
                                     {"type": "standard_scale", "columns": ["a", "b", "flat"]}], ["a", "b", "flat"]),
    "impute, min_max, then standard_scale the same columns": (
        [{"type": "impute", "columns": ["a"]}, {"type": "min_max_scale", "columns": ["a", "b"]},
         {"type": "standard_scale", "columns": ["a", "b", "tiny"]}], ["tiny", "a", "b"]),
    "impute most_frequent (strings), one_hot with max_categories": (
        [{"type": "impute", "columns": ["color"], "strategy": "most_frequent"},
         {"type": "one_hot", "columns": ["color", "city"], "max_categories": 4}], ["color", "city", "b"]),
    "impute constant (string), one_hot": (
        [{"type": "impute", "columns": ["color"], "strategy": "constant", "fill_value": "none"},
         {"type": "one_hot", "columns": ["color"]}], ["color", "a"]),
    "one_hot on numbers": ([{"type": "impute", "columns": ["a"]}, {"type": "one_hot", "columns": ["size"]}],
                           ["a", "size"]),
    "hash, min_max and drop": ([{"type": "drop", "columns": ["city"]},
                                {"type": "hash", "columns": ["color"], "num_buckets": 8},
                                {"type": "impute", "columns": ["a"]},
                                {"type": "min_max_scale", "columns": ["a", "b"]}], ["city", "color", "a", "b"]),
    "every step type": ([{"type": "drop", "columns": ["city"]},
                         {"type": "impute", "columns": ["color"], "strategy": "most_frequent"},
                         {"type": "one_hot", "columns": ["color"], "max_categories": 4},
                         {"type": "hash", "columns": ["count"], "num_buckets": 5},
                         {"type": "impute", "columns": ["a"]},
                         {"type": "standard_scale", "columns": ["a", "flat"]},
                         {"type": "min_max_scale", "columns": ["b"]}], ["a", "color", "city", "count", "b", "flat"]),
}


@cache
def _fit(chain: str, task: str = "classification") -> FittedPreprocessor:
    steps, features = CHAINS[chain]
    train = ray.data.from_pandas(_frame(0))
    label = "y" if task == "classification" else "size"
    return FittedPreprocessor.fit(train, train, STEPS.validate_python(steps), features, label, task)


def _serving_rows(fitted: FittedPreprocessor) -> pd.DataFrame:
    """Rows to transform; Ray refuses missing values in a one-hot column, so those get a seen category unless
    the chain imputes them."""
    rows = _frame(1, serving=True)[fitted.input_columns]
    for step in fitted.feature_steps:
        if isinstance(step, OneHotEncoder) and "color" in step.columns and "color" not in fitted.imputed_columns:
            rows = rows.assign(color=rows["color"].fillna("red"))
    return rows


def _encodings(fitted: FittedPreprocessor) -> dict[str, int]:
    """Width of each one-hot or hash encoded column, from the Ray preprocessors' own state."""
    widths: dict[str, int] = {}
    for step in fitted.feature_steps:
        if isinstance(step, OneHotEncoder):
            widths |= {c: len(step.stats_[f"unique_values({c})"]) for c in step.columns}
        elif isinstance(step, HashBuckets):
            widths |= dict.fromkeys(step.get_input_columns(), step._num_buckets)
    return widths


def _encoded(fitted: FittedPreprocessor) -> np.ndarray:
    """Which features are one-hot or hash positions."""
    widths = _encodings(fitted)
    return np.array([c in widths for c in fitted.input_columns for _ in range(widths.get(c, 1))], dtype=bool)


def _same(compiled: np.ndarray, reference: np.ndarray, encoded: np.ndarray) -> None:
    """Encodings equal; NaN where Ray has NaN; other values within 1e-6 relative.

    ``atol=0``: both sides compute the same IEEE-754 float64 operations, ``(x - offset) / divisor`` per step and
    one rounding to float32 at the end, so they agree to the bit; ``rtol`` only leaves room for a reordering. Any
    positive ``atol`` would let every value smaller than it pass unchecked, and the 1e-30 inputs and the ``tiny``
    column (values near 1e-30 whose std is under 1e-8, so they are only shifted) are meant to be checked.
    """
    assert compiled.dtype == np.float32 and reference.dtype == np.float32
    assert compiled.shape == reference.shape and encoded.shape == (compiled.shape[1],)
    np.testing.assert_array_equal(compiled[:, encoded], reference[:, encoded])
    np.testing.assert_array_equal(np.isnan(compiled), np.isnan(reference))
    np.testing.assert_allclose(compiled, reference, rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("chain", list(CHAINS))
def test_compiled_matches_ray_data(platform: rayline.Platform, chain: str) -> None:
    fitted = _fit(chain)
    compiled = fitted.compile()
    assert (compiled.input_columns, compiled.num_features) == (fitted.input_columns, fitted.num_features)
    assert (compiled.classes, compiled.num_outputs) == (fitted.classes, fitted.num_outputs)
    assert compiled.imputed_columns == fitted.imputed_columns
    assert compiled.numeric_only == (not _encodings(fitted))
    rows = _serving_rows(fitted)
    reference = fitted.transform_frame(rows)
    encoded = _encoded(fitted)
    assert reference.shape == (ROWS, fitted.num_features) and encoded.shape == (fitted.num_features,)
    _same(compiled.transform_frame(rows), reference, encoded)
    if compiled.numeric_only:
        _same(compiled.transform_block(rows.to_numpy(np.float64)), reference, encoded)
    if encoded.any():  # the exact comparison above compared real 0/1 encodings
        assert set(np.unique(reference[:, encoded])) == {0.0, 1.0}


def test_constant_and_empty_columns_follow_ray(platform: rayline.Platform) -> None:
    """Zero and near-zero ranges divide by 1, so constant columns are only shifted; an all-NaN training column
    gives NaN; a value outside the fitted range leaves [0, 1]."""
    fitted = _fit("min_max_scale")
    rows = pd.DataFrame({c: [7.0, 8.0] for c in fitted.input_columns}).assign(almost_flat=[1.0, 2.0])
    features = fitted.compile().transform_frame(rows)
    position = {c: i for i, c in enumerate(fitted.input_columns)}
    np.testing.assert_array_equal(features[:, position["flat"]], [0.0, 1.0])
    assert features[1, position["almost_flat"]] == pytest.approx(1.0, rel=1e-6)
    assert features[1, position["size"]] == pytest.approx(8.0 / 5.0, rel=1e-6)  # fitted on 0..5
    assert np.isnan(features[:, position["empty"]]).all()
    _same(features, fitted.transform_frame(rows), np.zeros(fitted.num_features, dtype=bool))


def test_unseen_and_missing_categories_encode_as_all_zeros(platform: rayline.Platform) -> None:
    fitted = _fit("one_hot (strings and ints)")  # city: c0..c11; count: -3..3
    compiled = fitted.compile()
    rows = pd.DataFrame({"city": ["c19", "c1", "c99", None], "count": [0, 100, 3, -3], "b": [0.0, 1.0, 2.0, 3.0]})
    features = compiled.transform_frame(rows)
    city, count = features[:, :12], features[:, 12:19]
    np.testing.assert_array_equal(city.sum(axis=1), [0, 1, 0, 0])
    np.testing.assert_array_equal(count.sum(axis=1), [1, 0, 1, 1])
    assert city[1, 1] == 1 and count[0, 3] == 1 and count[3, 0] == 1
    seen = rows.iloc[:3]  # Ray refuses the missing city
    _same(compiled.transform_frame(seen), fitted.transform_frame(seen), _encoded(fitted))


def test_transform_block_leaves_its_input_alone(platform: rayline.Platform) -> None:
    compiled = _fit("impute mean, standard_scale").compile()
    block = _serving_rows(_fit("impute mean, standard_scale")).to_numpy(np.float64)
    block.flags.writeable = False  # a request block may be a read-only view
    before = block.copy()
    assert not np.isnan(compiled.transform_block(block)[:, 0]).any()  # a is imputed
    np.testing.assert_array_equal(block, before)
    with pytest.raises(ValueError, match="block"):
        compiled.transform_block(block[:, :2])
    categorical = _fit("hash, min_max and drop").compile()
    with pytest.raises(ValueError, match="transform_frame"):
        categorical.transform_block(np.zeros((1, 3)))


def test_decode_matches_the_label_encoder(platform: rayline.Platform) -> None:
    fitted = _fit("standard_scale")
    compiled = fitted.compile()
    indices = np.array([2, 0, 1, 1])
    assert compiled.classes == ["maybe", "no", "yes"] == fitted.classes
    assert compiled.decode(indices) == list(fitted.decode(indices)) == ["yes", "maybe", "no", "no"]
    regression = _fit("standard_scale", "regression").compile()
    assert regression.classes is None and regression.num_outputs == 1 and regression.task == "regression"
    with pytest.raises(ValueError, match="classification"):
        regression.decode(indices)


def test_marker_like_categories_survive_the_state(platform: rayline.Platform) -> None:
    """Categories spelled like the state's own markers are stored as pairs, so they read back as categories."""
    names = np.array(["__pairs__", "__tuple__", "__dtype__", "x"], dtype=object)
    frame = pd.DataFrame({"kind": names[np.arange(40) % 4], "y": np.where(np.arange(40) % 3, "p", "q").astype(object)})
    data = ray.data.from_pandas(frame)
    fitted = FittedPreprocessor.fit(data, data, STEPS.validate_python([{"type": "one_hot", "columns": ["kind"]}]),
                                    ["kind"], "y", "classification")
    rows = frame[["kind"]]
    reference = fitted.transform_frame(rows)
    np.testing.assert_array_equal(FittedPreprocessor.from_json(fitted.to_json()).transform_frame(rows), reference)
    np.testing.assert_array_equal(fitted.compile().transform_frame(rows), reference)
    assert reference.sum() == len(rows)


def _edited(state: dict[str, Any], change: str) -> str:
    state = json.loads(json.dumps(state))
    steps = state["feature_steps"]
    if change == "type":
        steps[0]["type"] = "builtins.eval"
    elif change == "version":
        steps[0]["version"] = 2
    elif change == "no fill value":
        steps[0]["stats"]["mean(a)"] = None
    else:
        state["num_features"] += 1
    return json.dumps(state)


@pytest.mark.parametrize(("change", "message"), [("type", "unknown preprocessing step"), ("version", "version 2"),
                                                 ("no fill value", "no fill value"), ("width", "features")])
def test_unknown_or_inconsistent_state_is_refused(platform: rayline.Platform, change: str, message: str) -> None:
    state = json.loads(_fit("impute mean").to_json())
    CompiledPreprocessor.from_json(json.dumps(state))  # as fitted: accepted
    with pytest.raises(ValueError, match=message):
        CompiledPreprocessor.from_json(_edited(state, change))


NO_RAY = """
import json, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray" or name.startswith("rayline.data"):
            raise ImportError(f"{name} may not be imported here")
sys.meta_path.insert(0, Refuse())
import numpy as np, pandas as pd
from rayline.packaged.preprocessing import CompiledPreprocessor
rows = pd.read_parquet(sys.argv[1])
for i, path in enumerate(sys.argv[2:]):
    compiled = CompiledPreprocessor.from_json(open(path).read())
    np.save(f"{sys.argv[1]}.{i}.npy", compiled.transform_frame(rows[compiled.input_columns]))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "ray" or m.startswith("rayline.data"))))
"""


def test_compiled_state_loads_without_ray(platform: rayline.Platform, tmp_path: Path) -> None:
    chains = ["every step type", "impute, min_max, then standard_scale the same columns"]
    states = []
    for i, chain in enumerate(chains):
        states.append(tmp_path / f"state{i}.json")
        states[-1].write_text(_fit(chain).to_json())
    rows_file = tmp_path / "rows.parquet"
    _frame(2, serving=True).drop(columns=["y"]).to_parquet(rows_file)
    done = subprocess.run([sys.executable, "-c", NO_RAY, str(rows_file), *map(str, states)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    rows = pd.read_parquet(rows_file)
    for i, chain in enumerate(chains):
        fitted = _fit(chain)
        _same(np.load(f"{rows_file}.{i}.npy"), fitted.transform_frame(rows[fitted.input_columns]), _encoded(fitted))
