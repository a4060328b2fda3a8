"""A pipeline on a real three-node Ray cluster (head + 2 worker nodes): with ``train.scaling.placement: spread``
the run's Train workers run on two different nodes (each could hold both), every rank writes its checkpoint
shards into storage all nodes share, the Train controller logs each epoch to the MLflow server by its URI, and a
task pinned to each node loads the registered model from the registry by that URI and predicts the same labels.
The cluster runs in a process of its own (``multinode_cluster.py``); the MLflow server is the test session's
platform's."""

from __future__ import annotations

from pathlib import Path

import pytest

import rayline
from conftest import run_cluster_script
from multinode_cluster import EPOCHS, ROWS, WORKER_NODES

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("multinode_cluster.py")


def test_a_run_spreads_over_nodes_that_share_storage_and_reach_mlflow_by_uri(
        platform: rayline.Platform, mlflow_client, unique: str, tmp_path: Path) -> None:
    outcome = run_cluster_script(SCRIPT, str(tmp_path), platform.tracking_uri, unique, timeout=600)
    print(f"seconds: {outcome['seconds']}")
    assert platform.tracking_uri.startswith("http://")  # every node reaches MLflow by URI, never by a file path

    # one Train worker on each worker node (spread, though one node could hold both); the controller on the head
    workers = outcome["worker_nodes"]
    assert sorted(outcome["train_worker_nodes"]) == sorted(workers) and len(set(workers)) == WORKER_NODES
    assert outcome["controller_nodes"] == [outcome["head"]]

    # every checkpoint in the shared storage holds both ranks' shards (each rank wrote and uploaded its own)
    checkpoints = outcome["checkpoints"]
    assert len(checkpoints) == EPOCHS
    for files in checkpoints.values():
        assert {"meta.json", "sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp"} <= set(files)

    # the controller logged every epoch to the MLflow run while training (the driver backfilled nothing)
    assert not any("unreachable" in line for line in outcome["progress"]), outcome["progress"]
    run = mlflow_client.get_run(outcome["run_id"])
    for metric in ("train_loss", "val_accuracy", "workers"):
        history = mlflow_client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), metric
    assert {m.value for m in mlflow_client.get_metric_history(run.info.run_id, "workers")} == {WORKER_NODES}
    assert run.data.metrics["test_accuracy"] == pytest.approx(outcome["test_accuracy"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # artifacts travel through the server, too

    # the registered version, loaded on each of the three nodes, predicts the same labels (and mostly right)
    name, version = outcome["model_uri"].removeprefix("models:/").split("/")
    assert mlflow_client.get_model_version(name, version).run_id == run.info.run_id
    loaded = outcome["loaded"]
    assert sorted(load["node"] for load in loaded) == sorted([outcome["head"], *workers])
    labels = loaded[0]["labels"]
    assert len(labels) == ROWS and all(load["labels"] == labels for load in loaded)
    right = sum(label == truth for label, truth in zip(labels, outcome["true_labels"], strict=True))
    assert right / ROWS > 0.6
