"""The main job on real Ray and MLflow: a 2-worker DDP run on digits, what it records, and the promotion gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import rayline
from conftest import PIPELINES
from rayline.tracking import PROMOTION_TAG


@pytest.fixture(scope="module")
def model_name() -> str:
    return "digits-test"


@pytest.fixture(scope="module")
def champion(platform: rayline.Platform, model_name: str) -> rayline.PipelineResult:
    """pipelines/digits.yaml as shipped (2 DDP workers), registered under a test model name."""
    return rayline.run(PIPELINES / "digits.yaml",
                       {"tracking.model_name": model_name, "tracking.experiment": "digits-test"},
                       platform=platform)


def test_two_worker_ddp_run_reaches_the_bar(champion: rayline.PipelineResult) -> None:
    assert champion.metrics["test_accuracy"] >= 0.95
    assert champion.counts["train"] > 0 and champion.counts["test"] > 0
    assert champion.resumed_from_epoch is None
    assert champion.promotion.promoted


def test_run_records_params_metrics_dataset_spec_and_cost(champion: rayline.PipelineResult, mlflow_client) -> None:
    run = mlflow_client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.scaling.num_workers"] == "2"
    assert run.data.params["model.name"] == "cnn"
    assert run.data.params["preprocess.0.type"] == "min_max_scale"
    history = mlflow_client.get_metric_history(champion.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(10))  # one value per epoch, from rank 0 only
    expected = {"samples_per_s", "train_loss", "test_accuracy", "reserved_cpu_seconds", "cost_estimate"}
    assert expected <= set(run.data.metrics)
    assert run.data.metrics["reserved_cpu_seconds"] > 0 and run.data.metrics["cost_estimate"] > 0
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "digits" and len(dataset_input.dataset.digest) == 16
    assert {tag.key: tag.value for tag in dataset_input.tags}["rayline.digest_kind"] == "sha256-csv"
    artifacts = {a.path for a in mlflow_client.list_artifacts(champion.run_id)}
    assert "spec.yaml" in artifacts
    logged = yaml.safe_load(Path(mlflow_client.download_artifacts(champion.run_id, "spec.yaml")).read_text())
    assert logged["tracking"]["model_name"] == "digits-test"


def test_logged_model_has_signature_and_predicts(champion: rayline.PipelineResult) -> None:
    import mlflow

    model = mlflow.pyfunc.load_model(champion.model_uri)
    inputs = model.metadata.get_input_schema().input_names()
    assert len(inputs) == 64 and inputs[0] == "pixel_0_0"
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    predictions = model.predict(frame[inputs].head(50))
    assert (predictions["prediction"].astype(int).to_numpy() == frame["target"].head(50).to_numpy()).mean() > 0.9


def test_worse_model_does_not_take_the_alias(champion: rayline.PipelineResult, platform: rayline.Platform,
                                             model_name: str, mlflow_client) -> None:
    worse = rayline.run(PIPELINES / "digits.yaml", {
        "tracking.model_name": model_name, "tracking.experiment": "digits-test",
        "train.epochs": 1, "train.lr": 1e-5, "train.scaling.num_workers": 1,
    }, platform=platform)
    assert worse.metrics["test_accuracy"] < champion.metrics["test_accuracy"]
    assert not worse.promotion.promoted
    assert int(worse.model_version) == int(champion.model_version) + 1
    assert mlflow_client.get_model_version_by_alias(model_name, "champion").version == champion.model_version
    version = mlflow_client.get_model_version(model_name, worse.model_version)
    assert "does not beat" in version.tags[PROMOTION_TAG]
    assert "does not beat" in mlflow_client.get_run(worse.run_id).data.tags[PROMOTION_TAG]
