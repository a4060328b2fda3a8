"""Each bad input is refused with one error naming the field, before any worker starts; MLflow stays empty."""

from __future__ import annotations

from pathlib import Path

import pytest

import rayline
from conftest import PIPELINES


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


CASES = {
    "unknown key": (lambda tmp: {"train.epochz": 3}, "train.epochz", "unknown key"),
    "wrong type": (lambda tmp: {"train.epochs": "ten"}, "train.epochs", "integer"),
    "missing data file": (lambda tmp: {"data.source": str(tmp / "absent.csv")}, "data.source", "not found"),
    "missing Parquet file": (lambda tmp: {"data.source": str(tmp / "absent.parquet")}, "data.source", "not found"),
    "missing data directory": (lambda tmp: {"data.source": str(tmp / "absent")}, "data.source", "not found"),
    "directory without data files": (lambda tmp: {"data.source": str(tmp)}, "data.source", "no parquet files"),
    "empty CSV file": (lambda tmp: {"data.source": _csv(tmp / "blank.csv", "")}, "data.source", "is empty"),
    "empty Parquet file": (lambda tmp: {"data.source": _csv(tmp / "blank.parquet", "")}, "data.source", "is empty"),
    "CSV row with more fields than the header": (
        lambda tmp: {"data.source": _csv(tmp / "extra.csv", "size,weight,y\n1.0,2.0,0\n1.0,2.0,1,7\n"),
                     "data.label": "y", "preprocess": []},
        "data.source", "not valid CSV: CSV parse error: Expected 3 columns, got 4"),
    "binary garbage named .csv": (
        lambda tmp: {"data.source": _bytes(tmp / "garbage.csv", bytes((i * 37 + 11) % 256 for i in range(4096)))},
        "data.source", "not valid CSV"),
    "binary garbage named .parquet": (
        lambda tmp: {"data.source": _bytes(tmp / "garbage.parquet", b"PAR1" + bytes(range(256)) * 4)},
        "data.source", "not valid Parquet"),
    "label column absent": (lambda tmp: {"data.label": "digit"}, "data.label", "'digit' not found"),
    "non-numeric feature without encoding": (
        lambda tmp: {"data.source": _csv(tmp / "rows.csv", "size,color,y\n" + "1.0,red,0\n2.0,blue,1\n" * 20),
                     "data.label": "y", "preprocess": []},
        "data.features", "'color'"),
    "zero rows": (lambda tmp: {"data.source": _csv(tmp / "empty.csv", "size,weight,y\n"), "data.label": "y",
                               "preprocess": []}, "data.source", "zero rows"),
    "more workers than the cluster holds": (lambda tmp: {"train.scaling.num_workers": 64},
                                            "train.scaling.num_workers", "never fit"),
    "a worker range whose minimum the cluster never holds": (lambda tmp: {"train.scaling.num_workers": [64, 128]},
                                                             "train.scaling.num_workers", "64 workers"),
    "a worker range upside down": (lambda tmp: {"train.scaling.num_workers": [2, 1]}, "train.scaling.num_workers",
                                   "min <= max"),
    "a worker range under expert parallelism": (
        lambda tmp: {"train.strategy": "expert_parallel", "model": {"name": "moe"},
                     "train.scaling.num_workers": [1, 2]}, "train.scaling.num_workers", "fixed mesh"),
    "resources no node has": (lambda tmp: {"train.scaling.resources_per_worker": {"CPU": 64}},
                              "train.scaling.resources_per_worker", "no node"),
    "GPU on a CPU-only cluster": (lambda tmp: {"train.scaling.use_gpu": True}, "train.scaling.use_gpu", "GPU"),
    "fp16 without a GPU": (lambda tmp: {"train.precision": "fp16"}, "train.precision", "use bf16"),
    "unknown strategy": (lambda tmp: {"train.strategy": "zero3"}, "train.strategy", "'fsdp' or 'expert_parallel'"),
    "expert parallelism without experts": (lambda tmp: {"train.strategy": "expert_parallel"}, "train.strategy",
                                           "Mixture-of-Experts"),
    "a mesh that does not match the workers": (
        lambda tmp: {"train.strategy": "expert_parallel", "model": {"name": "moe"}, "train.mesh": {"expert": 4}},
        "train.mesh", "must equal scaling.num_workers (2)"),
    "experts that do not split over the mesh": (
        lambda tmp: {"train.strategy": "expert_parallel", "model": {"name": "moe", "params": {"num_experts": 3}}},
        "train.mesh.expert", "multiple of the mesh's expert dimension (2)"),
    "a mesh without expert parallelism": (lambda tmp: {"train.mesh": {"expert": 2}}, "train.mesh", "expert_parallel"),
    "unknown synthetic source": (lambda tmp: {"data.source": "synthetic://regression"}, "data.source",
                                 "synthetic://mixture"),
    "model import path that does not import": (lambda tmp: {"model.name": "no_such_package.nets:Net"},
                                               "model.name", "cannot import"),
    "model params that do not fit the data, streamed": (
        lambda tmp: {"data.cache": False, "model.params.input_shape": [1, 4, 4]}, "model.params", "holds 16 values"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_work(case: str, platform: rayline.Platform, tmp_path: Path, unique: str,
                                          mlflow_client) -> None:
    make_overrides, field, fragment = CASES[case]
    overrides = {**make_overrides(tmp_path), "tracking.experiment": unique, "tracking.model_name": unique}
    with pytest.raises(rayline.SpecError) as caught:
        rayline.run(PIPELINES / "digits.yaml", overrides, platform=platform)
    error = caught.value
    assert error.field == field
    assert fragment in error.message
    assert str(error).startswith(f"{PIPELINES / 'digits.yaml'}: {field}: ")
    assert mlflow_client.get_experiment_by_name(unique) is None
    assert mlflow_client.search_registered_models(f"name = '{unique}'") == []
    # Data prepared as Parquet before the failing check is deleted with the run.
    assert not list((Path(platform.storage_uri) / "prepared").glob("digits-*"))
