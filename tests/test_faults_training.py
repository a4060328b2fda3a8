"""Faults in data preparation and training, injected into real Ray workers: nothing is lost, a restart resumes
from the exact checkpoint, and what cannot be recovered fails loudly with nothing registered.

The injected models live in ``fault_models.py`` (loaded through the public ``module:factory`` model path)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ray.data
from sklearn.datasets import load_digits

import rayline
from conftest import PIPELINES, run_cli
from rayline.cluster.embedded import read_state
from rayline.cluster.processes import http_ok, stop_process_group, wait_until
from rayline.data import FittedPreprocessor
from rayline.data.split import SPLITS, assign_splits, select_split
from rayline.spec.pipeline import SplitSpec
from rayline.spec.preprocess import MinMaxScale
from rayline.train.fit import TrainingFailed

# Final test metrics of a restored run against an uninjected one: the restored run replays the same epochs on
# the same shards from the same weights and optimizer state, so only float summation order could differ.
LOSS_RTOL = 1e-3
ACCURACY_ATOL = 0.005  # under two test rows of 359
pytestmark = pytest.mark.slow


def _overrides(tmp_path: Path, platform: rayline.Platform, unique: str, fault: str, at_epoch: int,
               **train: Any) -> dict[str, Any]:
    return {
        "model": {"name": "fault_models:FaultOnceMLP", "params": {
            "marker": str(tmp_path / "fault"), "at_epoch": at_epoch, "fault": fault,
            "storage": platform.storage_uri, "hidden": [64]}},
        "preprocess": [], "train.epochs": 4, "train.batch_size": 64, "train.checkpoint_every": 1,
        **{f"train.{key}": value for key, value in train.items()},
        "tracking.experiment": unique, "tracking.model_name": unique,
    }


def _run(platform: rayline.Platform, overrides: dict[str, Any]) -> rayline.PipelineResult:
    return rayline.run(PIPELINES / "digits.yaml", overrides, platform=platform)


def _nothing_registered(mlflow_client, unique: str) -> None:
    assert mlflow_client.search_registered_models(f"name = '{unique}'") == []
    experiment = mlflow_client.get_experiment_by_name(unique)
    runs = mlflow_client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in runs] == ["FAILED"]


def _crash_once(batch: pd.DataFrame, marker: str) -> pd.DataFrame:
    """Kill this Ray Data worker process the first time it transforms the block holding row 0."""
    if 0 in set(batch["row_id"]) and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return batch


def test_a_preprocessing_task_that_dies_once_loses_and_duplicates_nothing(platform: rayline.Platform,
                                                                          tmp_path: Path) -> None:
    frame = load_digits(as_frame=True).frame
    frame.insert(0, "row_id", np.arange(len(frame)))
    split = SplitSpec(validation=0.1, test=0.2)
    features = [c for c in frame.columns if c.startswith("pixel_")]
    assigned = assign_splits(ray.data.from_pandas(frame).repartition(8), split, "target").materialize()
    step = MinMaxScale(type="min_max_scale", columns=features)
    fitted = FittedPreprocessor.fit(select_split(assigned, "train"), assigned, [step], features, "target",
                                    "classification")
    marker = tmp_path / "crashed"
    ids: list[int] = []
    for name in SPLITS:
        # The crash runs in the same (fused) task as the preprocessing transform.
        prepared = fitted.transform_dataset(select_split(assigned, name), keep=["row_id"]).map_batches(
            _crash_once, fn_kwargs={"marker": str(marker)}, batch_format="pandas")
        ids += prepared.select_columns(["row_id"]).to_pandas()["row_id"].tolist()
    assert marker.exists()  # a worker really died
    assert len(ids) == len(frame)
    assert sorted(ids) == list(range(len(frame)))  # every row once: none lost, none duplicated


@pytest.fixture(scope="module")
def uninjected(platform: rayline.Platform, tmp_path_factory: pytest.TempPathFactory) -> rayline.PipelineResult:
    """The same run without a fault (the fault model's epoch is never reached)."""
    tmp = tmp_path_factory.mktemp("uninjected")
    return _run(platform, _overrides(tmp, platform, f"t{tmp.name[-8:]}", "kill", at_epoch=99))


def test_a_killed_worker_resumes_from_the_exact_checkpoint(platform: rayline.Platform, state_dir: Path,
                                                           tmp_path: Path, unique: str, mlflow_client,
                                                           uninjected: rayline.PipelineResult) -> None:
    overrides = _overrides(tmp_path, platform, unique, "kill", at_epoch=2, max_failures=1)
    done = run_cli("run", str(PIPELINES / "digits.yaml"),
                   *(arg for key, value in overrides.items() for arg in ("--set", f"{key}={_yaml(value)}")),
                   state_dir=state_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "fault").read_text().startswith("kill ")  # the worker really was killed
    assert "restored from the checkpoint of epoch 1" in done.stdout
    run_id = re.search(r"run id\s+(\w+)", done.stdout).group(1)
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["resumed_from_epoch"] == 1
    expected = uninjected.metrics
    assert run.data.metrics["test_loss"] == pytest.approx(expected["test_loss"], rel=LOSS_RTOL)
    assert run.data.metrics["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=ACCURACY_ATOL)


def _yaml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def test_a_killed_worker_without_restarts_fails_and_registers_nothing(platform: rayline.Platform, tmp_path: Path,
                                                                      unique: str, mlflow_client) -> None:
    with pytest.raises(TrainingFailed) as caught:
        _run(platform, _overrides(tmp_path, platform, unique, "kill", at_epoch=1, max_failures=0))
    message = str(caught.value)
    assert "0 restart(s) allowed" in message
    assert "rank 1: its worker process died" in message, message
    assert len(message.splitlines()) == 1
    _nothing_registered(mlflow_client, unique)


def test_a_corrupt_latest_checkpoint_is_a_clear_error_not_a_fresh_start(platform: rayline.Platform,
                                                                        tmp_path: Path, unique: str,
                                                                        mlflow_client) -> None:
    with pytest.raises(TrainingFailed) as caught:
        _run(platform, _overrides(tmp_path, platform, unique, "corrupt", at_epoch=2, max_failures=1))
    assert (tmp_path / "fault").read_text().startswith("corrupt ")
    message = str(caught.value)
    assert "model.safetensors is not a readable safetensors file" in message, message
    assert len(message.splitlines()) == 1
    _nothing_registered(mlflow_client, unique)


def test_a_worker_killed_mid_upload_resumes_from_the_last_whole_checkpoint(platform: rayline.Platform,
                                                                           tmp_path: Path, unique: str) -> None:
    """Checkpoints upload in the background (``train.checkpoint_upload: async``), and Ray Train registers one only
    once all its files are in storage: rank 0, SIGKILLed halfway through uploading epoch 2's checkpoint, leaves a
    partial directory that nothing resumes from."""
    overrides = _overrides(tmp_path, platform, unique, "upload", at_epoch=2, max_failures=1)
    overrides["model"]["params"]["hidden"] = [2048, 2048]  # about 50 MB a checkpoint: an upload long enough to cut
    result = _run(platform, overrides)
    fault = json.loads((tmp_path / "fault").read_text())
    assert fault["bytes"] < fault["whole"], fault  # the kill landed mid-upload: a half checkpoint was in storage
    assert result.resumed_from_epoch == 1
    snapshot = json.loads((Path(fault["partial"]).parent / "checkpoint_manager_snapshot.json").read_text())
    registered = {entry["checkpoint_dir_name"] for entry in snapshot["checkpoint_results"]}
    assert Path(fault["partial"]).name not in registered
    assert result.metrics["test_accuracy"] > 0.8


def test_a_rank_hung_in_a_collective_times_out_and_the_run_resumes(platform: rayline.Platform, tmp_path: Path,
                                                                   unique: str) -> None:
    timeout_s = 10
    started = time.monotonic()
    result = _run(platform, _overrides(tmp_path, platform, unique, "hang", at_epoch=1, max_failures=1,
                                       collective_timeout_s=timeout_s, epochs=3))
    assert (tmp_path / "fault").read_text().startswith("hang ")
    assert result.resumed_from_epoch == 0
    assert result.promotion is not None and result.model_version
    assert time.monotonic() - started < timeout_s + 120  # the timeout fired: nothing waited for ever


def test_training_outlives_an_mlflow_outage_and_loses_no_metric(platform: rayline.Platform, state_dir: Path,
                                                                unique: str, mlflow_client) -> None:
    """The tracking server dies after epoch 0 is logged and comes back three epochs later: training goes on,
    the missing epochs are logged from the train loop's history, and the run says so."""
    epochs = 8
    outcome: dict[str, Any] = {}
    snapshots = "train/*/checkpoint_manager_snapshot.json"
    earlier_runs = set(Path(platform.storage_uri).glob(snapshots))

    def pipeline() -> None:
        try:
            outcome["result"] = _run(platform, {
                "model": {"name": "fault_models:SlowMLP", "params": {"step_s": 0.05, "hidden": [32]}},
                "preprocess": [], "train.epochs": epochs, "train.checkpoint_every": 1,
                "tracking.experiment": unique, "tracking.model_name": unique})
        except BaseException as err:  # handed to the test thread
            outcome["error"] = err

    def logged_epochs() -> int:
        experiment = mlflow_client.get_experiment_by_name(unique)
        runs = mlflow_client.search_runs([experiment.experiment_id]) if experiment else []
        return len(mlflow_client.get_metric_history(runs[0].info.run_id, "train_loss")) if runs else 0

    def registered_epoch(epoch: int) -> bool:
        """This run's (the one snapshot that is new: tests train one run at a time)."""
        ours = set(Path(platform.storage_uri).glob(snapshots)) - earlier_runs
        try:
            results = json.loads(ours.pop().read_text())["checkpoint_results"]
        except (KeyError, OSError, ValueError):  # not written yet, or being written
            return False
        return any(result["metrics"].get("epoch", -1) >= epoch for result in results)

    runner = threading.Thread(target=pipeline, daemon=True)
    runner.start()
    wait_until(lambda: logged_epochs() >= 1 or not runner.is_alive(), 180, "epoch 0 in MLflow")
    assert runner.is_alive(), outcome
    stop_process_group(read_state(state_dir).mlflow_pid, must_contain="mlflow")
    wait_until(lambda: registered_epoch(3) or not runner.is_alive(), 180, "epoch 3 checkpoint")
    assert not http_ok(f"{platform.tracking_uri}/health")  # it really was down for those epochs
    rayline.up(state_dir)  # MLflow comes back on the same port (Ray kept running)
    runner.join(timeout=300)
    assert not runner.is_alive() and "error" not in outcome, outcome.get("error")
    run = mlflow_client.get_run(outcome["result"].run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in mlflow_client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == list(range(epochs))  # nothing lost, nothing twice
    assert "were logged after training" in run.data.tags["rayline.tracking_outage"]
    assert mlflow_client.get_model_version(unique, outcome["result"].model_version)
