"""Parallelism strategies and the optimizer step on the session platform: FSDP and expert parallelism (on 2
workers, and on a 2x2 expert-data mesh of 4) train like DDP on the same seed, FSDP checkpoints resume on another
worker count, gradient accumulation matches the larger batch it adds up to, and bf16 autocast really changes the
arithmetic while still learning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray.util.state import list_actors

import rayline
from conftest import PIPELINES
from rayline.cluster.processes import wait_until
from rayline.data import prepare
from rayline.spec import load_spec
from rayline.train import fit
from rayline.train.checkpoint import WEIGHTS
from rayline.train.sharded_checkpoint import SHARDS

pytestmark = pytest.mark.slow
MLP = {"name": "mlp", "params": {"hidden": [64, 32]}}  # no dropout: runs of the same seed compare exactly
MOE = {"name": "moe", "params": {"dim": 32, "hidden": 64, "num_experts": 4, "top_k": 2, "capacity_factor": 1.0}}
EPOCHS = 3


def _overrides(name: str, model: dict[str, Any] = MLP, **train: Any) -> dict[str, Any]:
    return {"model": model, "train.epochs": EPOCHS, "train.batch_size": 64, "tracking.experiment": name,
            "tracking.model_name": name, **{f"train.{field}": value for field, value in train.items()}}


def _run(platform: rayline.Platform, name: str, model: dict[str, Any] = MLP, **train: Any) -> rayline.PipelineResult:
    return rayline.run(PIPELINES / "digits.yaml", _overrides(name, model, **train), platform=platform)


def _history(mlflow_client, run_id: str, metric: str) -> list[float]:
    return [m.value for m in sorted(mlflow_client.get_metric_history(run_id, metric), key=lambda m: m.step)]


def _losses(platform: rayline.Platform, mlflow_client, name: str, **train: Any) -> tuple[list[float], float]:
    """A pipeline run's train_loss per epoch, and its test accuracy."""
    result = _run(platform, name, **train)
    return _history(mlflow_client, result.run_id, "train_loss"), result.metrics["test_accuracy"]


@pytest.fixture(scope="module")
def ddp(platform: rayline.Platform, mlflow_client) -> tuple[list[float], float]:
    return _losses(platform, mlflow_client, "parallel-ddp")


def test_fsdp_trains_like_ddp(ddp: tuple[list[float], float], platform: rayline.Platform, mlflow_client) -> None:
    """Same seed, same batches: sharded parameters change where the weights live, not the arithmetic (up to the
    order of float additions). The registered model is the full, unsharded state_dict (packaging loads it)."""
    losses, accuracy = _losses(platform, mlflow_client, "parallel-fsdp", strategy="fsdp")
    assert losses == pytest.approx(ddp[0], rel=1e-4)
    assert accuracy == pytest.approx(ddp[1], abs=0.006)


def test_activation_checkpointing_under_fsdp_trains_like_ddp(ddp: tuple[list[float], float],
                                                             platform: rayline.Platform, mlflow_client) -> None:
    """Recomputing each block's activations in the backward pass changes memory, not the arithmetic; the
    checkpoint wrappers leave the registered state_dict's keys alone (packaging loads it)."""
    losses, accuracy = _losses(platform, mlflow_client, "parallel-activations", strategy="fsdp",
                               activation_checkpointing=True)
    assert losses == pytest.approx(ddp[0], rel=1e-4)
    assert accuracy == pytest.approx(ddp[1], abs=0.006)


def test_gradient_accumulation_matches_the_batch_it_adds_up_to(ddp: tuple[list[float], float],
                                                               platform: rayline.Platform, mlflow_client) -> None:
    """Two batches of 32 whose gradients add up before each step train as one batch of 64 does."""
    losses, _ = _losses(platform, mlflow_client, "parallel-accum", batch_size=32, grad_accum_steps=2)
    assert losses == pytest.approx(ddp[0], rel=1e-4)


def test_bf16_autocast_changes_the_arithmetic_and_still_learns(ddp: tuple[list[float], float],
                                                               platform: rayline.Platform, mlflow_client) -> None:
    losses, accuracy = _losses(platform, mlflow_client, "parallel-bf16", precision="bf16")
    assert losses != pytest.approx(ddp[0], rel=1e-4)  # autocast really ran in bf16
    assert losses == pytest.approx(ddp[0], rel=0.05) and accuracy > ddp[1] - 0.05


def test_an_fsdp_checkpoint_from_two_workers_resumes_on_one(platform: rayline.Platform, tmp_path) -> None:
    """Each of the two workers wrote only its own shards (nothing gathered); DCP reshards them for one worker."""
    platform.init_ray()
    two = load_spec(PIPELINES / "digits.yaml", _overrides("parallel-resume", strategy="fsdp", epochs=2))
    one = load_spec(PIPELINES / "digits.yaml", _overrides("parallel-resume", strategy="fsdp",
                                                           **{"scaling.num_workers": 1}))
    prepared = prepare(two, platform.storage_uri)
    try:
        first = fit(two, prepared, platform.storage_uri, run_name=f"fsdp-two-{tmp_path.name}")
        then = fit(one, prepared, platform.storage_uri, run_name=f"fsdp-one-{tmp_path.name}",
                   start_from=first.checkpoint)
    finally:
        prepared.release()
    shards = Path(first.checkpoint.path) / SHARDS
    assert sorted(path.name for path in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (Path(first.checkpoint.path) / WEIGHTS).exists()  # no full copy beside the shards
    assert then.resumed_from_epoch == 1
    assert [epoch["train_loss"] for epoch in then.history[:2]] == [epoch["train_loss"] for epoch in first.history]
    assert then.history[2]["train_loss"] < first.history[1]["train_loss"]  # it went on from there, not scratch
    assert then.test_metrics["test_accuracy"] >= first.test_metrics["test_accuracy"] - 0.02
    # fit() in this process's main thread leaves no Train controller behind (Ray's SIGINT handler held it, with
    # its workers' placement group, and a later run in the session waited forever for those CPUs)
    wait_until(lambda: not list_actors(address=platform.dashboard_url,
                                       filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE")]),
               60, "the runs' Train controllers to exit")


def test_expert_parallel_trains_like_ddp(platform: rayline.Platform, mlflow_client) -> None:
    """The same Mixture-of-Experts under DDP (every worker holds every expert) and split across 4 workers (4
    experts on 2 expert ranks, sharded by FSDP over a data dimension of 2), with fractional CPUs so that 4 workers
    fit: routing, capacity drops and the auxiliary loss are per worker batch in both, so the losses agree up to
    float order. Each epoch's expert load, drop rate and imbalance reach MLflow. (Expert ranks alone, without a
    data dimension, compute what one process does in tests/test_moe.py.)"""
    workers, mesh = 4, {"data": 2, "expert": 2}
    scaling = {"scaling.num_workers": workers, "scaling.resources_per_worker": {"CPU": 0.5}}
    ddp = _run(platform, f"parallel-moe-ddp{workers}", MOE, **scaling)
    split = _run(platform, f"parallel-moe-ep{workers}", MOE, strategy="expert_parallel", mesh=mesh, **scaling)
    assert _history(mlflow_client, split.run_id, "train_loss") == pytest.approx(
        _history(mlflow_client, ddp.run_id, "train_loss"), rel=1e-4)
    shares = [_history(mlflow_client, split.run_id, f"moe0_expert{expert}_load") for expert in range(4)]
    assert all(len(share) == EPOCHS for share in shares)
    assert [sum(epoch) for epoch in zip(*shares, strict=True)] == pytest.approx([1.0] * EPOCHS)
    assert _history(mlflow_client, split.run_id, "moe0_drop_rate") == pytest.approx(
        _history(mlflow_client, ddp.run_id, "moe0_drop_rate"), rel=1e-6)
    imbalance = _history(mlflow_client, split.run_id, "moe0_imbalance")
    assert all(1.0 <= value <= 4.0 for value in imbalance)
    assert split.metrics["test_accuracy"] == pytest.approx(ddp.metrics["test_accuracy"], abs=0.006)
