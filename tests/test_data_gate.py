"""The data gate: data that would train a wrong model while reporting success is refused before any worker starts,
every problem in one error (nulls no step handles, a null or single-class label). (A run whose loss is not finite
fails without registering anything: tests/test_submit.py, through the CLI in a Ray job.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import rayline
from conftest import PIPELINES, run_cli
from rayline.data.split import row_units


def _rows(count: int = 200, seed: int = 0) -> pd.DataFrame:
    """Two numeric features and a binary label they determine."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=count).round(3), rng.normal(size=count).round(3)
    return pd.DataFrame({"a": a, "b": b, "y": (a + b > 0).astype(np.int64)})


def _csv(path: Path, frame: pd.DataFrame, extra_lines: str = "") -> str:
    path.write_text(frame.to_csv(index=False) + extra_lines)
    return str(path)


def _overrides(source: str, unique: str, **more: object) -> dict[str, object]:
    return {"data.source": source, "data.label": "y", "preprocess": [{"type": "standard_scale", "columns": ["a", "b"]}],
            "model": {"name": "mlp", "params": {"hidden": [16]}}, "train.epochs": 2, "train.scaling.num_workers": 1,
            "tracking.experiment": unique, "tracking.model_name": unique, **more}


def _refused(platform: rayline.Platform, overrides: dict[str, object], mlflow_client) -> rayline.SpecError:
    with pytest.raises(rayline.SpecError) as caught:
        rayline.run(PIPELINES / "digits.yaml", overrides, platform=platform)
    assert mlflow_client.get_experiment_by_name(overrides["tracking.experiment"]) is None  # nothing was tracked
    return caught.value


def test_feature_nulls_no_step_imputes_are_refused_naming_every_column_and_count(
        platform: rayline.Platform, tmp_path: Path, unique: str, mlflow_client) -> None:
    # pyarrow reads "n/a", "null" and an empty field as null
    source = _csv(tmp_path / "rows.csv", _rows(), "n/a,1,0\n1.5,,1\n2.5,null,0\n")
    error = _refused(platform, _overrides(source, unique), mlflow_client)
    assert error.field == "data.features"
    assert "'a' (1 null)" in error.message and "'b' (2 nulls)" in error.message, error.message
    assert "impute" in error.message
    assert len(str(error).splitlines()) == 1


def test_a_label_with_one_class_in_training_is_refused(platform: rayline.Platform, tmp_path: Path, unique: str,
                                                       mlflow_client) -> None:
    source = _csv(tmp_path / "rows.csv", _rows().assign(y=0))
    error = _refused(platform, _overrides(source, unique), mlflow_client)
    assert error.field == "data.label"
    assert "at least 2 classes" in error.message and "only 1" in error.message, error.message


def test_null_labels_are_refused_by_default(platform: rayline.Platform, tmp_path: Path, unique: str,
                                            mlflow_client) -> None:
    source = _csv(tmp_path / "rows.csv", _rows(), "0.5,0.5,\n-0.5,0.1,\n")
    error = _refused(platform, _overrides(source, unique), mlflow_client)
    assert error.field == "data.label"
    assert "2 null values" in error.message and "data.drop_null_labels" in error.message, error.message


def test_an_entirely_null_label_is_one_line_and_exit_2(platform: rayline.Platform, state_dir: Path,
                                                       tmp_path: Path, unique: str) -> None:
    frame = _rows().astype({"y": object})
    frame["y"] = None
    source = _csv(tmp_path / "rows.csv", frame)
    sets = [f"data.source={source}", "data.label=y", "preprocess=[]", "model.name=mlp", "train.epochs=1",
            f"tracking.experiment={unique}", f"tracking.model_name={unique}"]
    done = run_cli("run", "pipelines/digits.yaml", *(a for s in sets for a in ("--set", s)), state_dir=state_dir)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert line == "error: pipelines/digits.yaml: data.label: label column 'y' is entirely null (200 rows)", line


def test_every_data_problem_is_listed_in_one_error(platform: rayline.Platform, unique: str, mlflow_client) -> None:
    overrides = {"data.label": "digit", "data.features": ["pixel_0_0", "pixel_9_9"],
                 "preprocess": [{"type": "min_max_scale", "columns": ["pixel_0_*"]},
                                {"type": "standard_scale", "columns": ["width_*"]}],
                 "train.scaling.resources_per_worker": {"CPU": 64},
                 "tracking.experiment": unique, "tracking.model_name": unique}
    error = _refused(platform, overrides, mlflow_client)
    fields = [problem.field for problem in error.problems]
    assert fields == ["train.scaling.resources_per_worker", "data.label", "data.features", "preprocess.1.columns"], \
        str(error)
    assert "'pixel_9_9'" in str(error) and "'width_*'" in str(error)


def _rows_landing_in(split: str, frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The rows of ``frame`` that the pipeline's split (by content hash and seed) puts in ``split``, with the
    validation and test fractions of digits.yaml."""
    unit = row_units(frame, seed)
    where = np.where(unit < 0.2, "test", np.where(unit < 0.3, "validation", "train"))
    return frame[where == split]


@pytest.fixture(scope="module")
def dropped_run(platform: rayline.Platform, tmp_path_factory: pytest.TempPathFactory) -> rayline.PipelineResult:
    """A run with ``data.drop_null_labels`` over rows of which two have no label, and whose class ``rare`` lands in
    the training split only (string labels: a column's dtype, which the split's hash depends on, is the same in
    every block)."""
    tmp = tmp_path_factory.mktemp("dropped")
    frame = _rows(300)
    frame["y"] = np.where(frame["y"] == 1, "pos", "neg").astype(object)
    rare = _rows(40, seed=1)
    rare["y"] = "rare"
    unlabelled = pd.DataFrame({"a": [0.25, -0.75], "b": [0.5, 0.125], "y": [None, None]})
    table = pd.concat([frame, _rows_landing_in("train", rare, seed=42).head(3), unlabelled], ignore_index=True)
    source = tmp / "rows.parquet"
    table.to_parquet(source)
    name = f"t{tmp.name[-8:]}"
    return rayline.run(PIPELINES / "digits.yaml", _overrides(str(source), name, **{"data.drop_null_labels": True}),
                       platform=platform)


def test_dropping_null_labels_reports_how_many(dropped_run: rayline.PipelineResult, mlflow_client) -> None:
    assert sum(dropped_run.counts.values()) == 303
    assert dropped_run.dropped_null_labels == 2
    assert mlflow_client.get_run(dropped_run.run_id).data.metrics["rows_dropped_null_label"] == 2
    assert any("2 rows whose label is null were dropped" in note for note in dropped_run.notes), dropped_run.notes


def test_a_class_absent_from_validation_and_test_is_reported(dropped_run: rayline.PipelineResult,
                                                             mlflow_client) -> None:
    tags = mlflow_client.get_run(dropped_run.run_id).data.tags
    expected = "class 'rare' is in the training split but not in validation, test"
    assert tags["rayline.classes_missing"] == expected, tags
    assert any(expected in note
               for note in dropped_run.notes), dropped_run.notes
