"""Run the one train loop on Ray Train workers (TorchTrainer) over prepared data."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rayline.data import PreparedData
from rayline.errors import RaylineError
from rayline.spec import PipelineSpec
from rayline.train.loop import LoopConfig, train_loop


class TrainingFailed(RaylineError):
    """Training did not finish, even after ``train.max_failures`` restarts."""


@dataclass
class TrainOutcome:
    """What a finished training run hands to packaging and tracking."""

    checkpoint: Checkpoint
    test_metrics: dict[str, float]
    last_epoch_metrics: dict[str, float]
    resumed_from_epoch: int | None
    world_size: int
    wall_s: float
    path: str


def fit(spec: PipelineSpec, prepared: PreparedData, storage_uri: str, run_name: str,
        tracking_uri: str | None = None, run_id: str | None = None) -> TrainOutcome:
    """Train ``spec.model`` on ``prepared`` with ``spec.train.scaling`` workers; checkpoints go under storage."""
    config = LoopConfig(
        model=spec.model.model_dump(),
        train=spec.train.model_dump(),
        task=spec.data.task,
        label=spec.data.label,
        num_features=prepared.preprocessor.num_features,
        num_outputs=prepared.preprocessor.num_outputs,
        splits=list(prepared.datasets),
        tracking_uri=tracking_uri,
        run_id=run_id,
    )
    scaling = spec.train.scaling
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=asdict(config),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=dict(scaling.resources_per_worker)),
        datasets=prepared.datasets,
        run_config=RunConfig(
            name=run_name,
            storage_path=f"{storage_uri.rstrip('/')}/train",
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as err:  # Ray raises TrainingFailedError wrapping the worker's exception
        raise TrainingFailed(f"training failed (up to {spec.train.max_failures} restart(s) allowed): {err}") from err
    value: dict[str, Any] = result.return_value or {}
    if result.error is not None or result.checkpoint is None or not value:
        raise TrainingFailed(f"training did not finish: {result.error or 'no checkpoint was reported'}")
    return TrainOutcome(
        checkpoint=result.checkpoint,
        test_metrics={k: v for k, v in value["test"].items() if not k.endswith("_rows")},
        last_epoch_metrics=value["last_epoch_metrics"],
        resumed_from_epoch=value["resumed_from_epoch"],
        world_size=value["world_size"],
        wall_s=time.perf_counter() - started,
        path=result.path,
    )
