"""Run the one train loop on Ray Train workers (TorchTrainer) over prepared data."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from ray.data import Dataset
from ray.exceptions import RayActorError
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchConfig, TorchTrainer

from rayline.data import PreparedData
from rayline.errors import RaylineError
from rayline.spec import PipelineSpec
from rayline.train.batches import resident_splits
from rayline.train.loop import LoopConfig, train_loop
from rayline.train.tracking_callback import EpochMetricsToMlflow

# Ray Train's controller collects each worker's report when it polls the workers (every 2 s by default), and a
# worker's next report waits until the previous one was collected: epochs shorter than the interval would wait
# for it. Ray propagates this variable from the driver to the controller.
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
POLL_INTERVAL_S = "0.2"


class TrainingFailed(RaylineError):
    """Training did not finish, even after ``train.max_failures`` restarts."""


class TrainingDiverged(RaylineError):
    """Training finished with a loss that is not finite: its model must not be registered."""


@dataclass
class TrainOutcome:
    """What a finished training run hands to packaging and tracking."""

    checkpoint: Checkpoint
    test_metrics: dict[str, float]
    resumed_from_epoch: int | None
    history: list[dict[str, float]]  # rank 0's metrics of every epoch (what the MLflow run must hold)
    wall_s: float
    stages: dict[str, float]

    def non_finite(self) -> str | None:
        """Which loss went NaN or infinite, and from which epoch (training and validation), or the test loss; None
        when every loss is finite."""
        for epoch in self.history:
            bad = {key: epoch[key] for key in ("train_loss", "val_loss") if not math.isfinite(epoch.get(key, 0.0))}
            if bad:
                first, *others = bad.items()
                also = "".join(f" ({key} {value})" for key, value in others)
                return f"{first[0]} is {first[1]} from epoch {int(epoch['epoch'])}{also}"
        loss = self.test_metrics.get("test_loss", 0.0)
        return None if math.isfinite(loss) else f"test_loss is {loss}"

    @property
    def resume_metrics(self) -> dict[str, float]:
        """``{"resumed_from_epoch": n}`` after a restart from a checkpoint, else nothing: what the MLflow run logs."""
        return {} if self.resumed_from_epoch is None else {"resumed_from_epoch": self.resumed_from_epoch}


def fit(spec: PipelineSpec, prepared: PreparedData, storage_uri: str, run_name: str,
        tracking_uri: str | None = None, run_id: str | None = None,
        callbacks: Sequence[UserCallback] = (), start_from: Checkpoint | None = None) -> TrainOutcome:
    """Train ``spec.model`` on ``prepared`` with ``spec.train.scaling`` workers; checkpoints go under storage.

    ``callbacks`` join Ray Train's (a sweep's trial passes one that reports to Ray Tune). ``start_from``: the
    weights, optimizer state and epoch to start from when run ``run_name`` has no checkpoint of its own."""
    scaling = spec.train.scaling
    # an elastic run's worker count changes between restarts: its splits are split for each worker group
    presharded = frozenset() if scaling.elastic else prepared.materialized
    config = LoopConfig(
        model=spec.model.model_dump(),
        train=spec.train.model_dump(),
        task=spec.data.task,
        label=spec.data.label,
        num_features=prepared.preprocessor.num_features,
        num_outputs=prepared.preprocessor.num_outputs,
        splits=list(prepared.datasets),
        presharded=sorted(presharded),
        resident=resident_splits(presharded, prepared.counts, scaling.min_workers,
                                 prepared.preprocessor.num_features),
        start_from=_uri(start_from) if start_from else None,
    )
    datasets, data_config = _worker_datasets(prepared, presharded, scaling.min_workers)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=asdict(config),
        torch_config=TorchConfig(timeout_s=spec.train.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=dict(scaling.resources_per_worker),
                                     placement_strategy=scaling.placement.upper(),
                                     elastic_resize_monitor_interval_s=scaling.elastic_resize_interval_s),
        datasets=datasets,
        dataset_config=data_config,
        run_config=RunConfig(
            name=run_name,
            storage_path=f"{storage_uri.rstrip('/')}/train",
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[*([EpochMetricsToMlflow(tracking_uri, run_id)] if tracking_uri and run_id else []),
                       *callbacks],
        ),
    )
    started, started_at = time.perf_counter(), time.time()
    try:
        with _controller_poll_interval(), _sigint_handler_restored():
            result = trainer.fit()
    except Exception as err:  # Ray raises TrainingFailedError wrapping the worker's exception
        raise TrainingFailed(f"training failed (up to {spec.train.max_failures} restart(s) allowed): "
                             f"{_explain(err)}") from err
    value: dict[str, Any] = result.return_value or {}
    # a run started from a checkpoint of the last epoch (a sweep resumed during a trial's test evaluation) trains
    # no epoch and reports no checkpoint: its model is the one it started from
    checkpoint = result.checkpoint or (Checkpoint(start_from.path, start_from.filesystem) if start_from else None)
    if result.error is not None or checkpoint is None or not value:
        raise TrainingFailed(f"training did not finish: {result.error or 'no checkpoint was reported'}")
    finished_at = time.time()
    return TrainOutcome(
        checkpoint=checkpoint,
        test_metrics={k: v for k, v in value["test"].items() if not k.endswith("_rows")},
        resumed_from_epoch=value["resumed_from_epoch"],
        history=value["history"],
        wall_s=time.perf_counter() - started,
        stages=_stages(value["timings"], started_at, finished_at),
    )


def _uri(checkpoint: Checkpoint) -> str:
    """Where ``checkpoint`` is, as a path (local) or a URI its filesystem resolves (s3://, gs://)."""
    kind = checkpoint.filesystem.type_name if checkpoint.filesystem is not None else "local"
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def _explain(err: BaseException) -> str:
    """What failed, one clause per failed rank (Ray's full report, with tracebacks, stays chained to the error)."""
    failures = getattr(err, "worker_failures", None)
    if not failures:
        return _last_line(str(err))
    return "; ".join(f"rank {rank}: {_rank_failure(failure)}" for rank, failure in sorted(failures.items()))


def _rank_failure(failure: BaseException) -> str:
    if isinstance(getattr(failure, "health_check_failure", failure), RayActorError):
        return "its worker process died (killed by a signal, out of memory, or crashed)"
    return _last_line(str(failure))  # a worker's traceback ends with the exception itself


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _worker_datasets(prepared: PreparedData, presharded: frozenset[str],
                     workers: int) -> tuple[dict[str, Dataset], DataConfig]:
    """What each worker iterates. The ``presharded`` splits (materialized ones, with a fixed worker count) are cut
    once into equal per-rank shards (``Dataset.split``, named ``<split>_rank<rank>``): an epoch then reads blocks
    already in the object store, with no split coordinator to start or to synchronise with. The others go through
    Ray Train's ``streaming_split``, for each worker group (streamed splits read the prepared Parquet again each
    epoch)."""
    datasets: dict[str, Dataset] = {}
    for name, dataset in prepared.datasets.items():
        if name in presharded:
            datasets |= {f"{name}_rank{rank}": shard for rank, shard in enumerate(dataset.split(workers, equal=True))}
        else:
            datasets[name] = dataset
    return datasets, DataConfig(datasets_to_split=[name for name in prepared.datasets if name not in presharded])


def _stages(timings: dict[str, float], started_at: float, finished_at: float) -> dict[str, float]:
    """Where ``fit`` spent its wall time, from rank 0's clock readings (the last attempt's, after a restart)."""
    return {
        "worker_start": max(0.0, timings["loop_entered_at"] - started_at) + timings["setup_s"],
        "epochs": timings["epochs_s"],
        "test_evaluation": timings["test_s"],
        "worker_stop": max(0.0, finished_at - timings["loop_left_at"]),
    }


@contextmanager
def _sigint_handler_restored() -> Iterator[None]:
    """Put back the SIGINT handler that Ray Train replaces in the main thread. Its handler holds the run's
    controller, which would otherwise outlive the run with its workers' placement group in a long-lived process
    (a notebook, a test session), and the next run could wait forever for those CPUs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _controller_poll_interval() -> Iterator[None]:
    """Poll workers every ``POLL_INTERVAL_S`` during ``fit`` unless the user chose an interval."""
    chosen = os.environ.get(POLL_INTERVAL_ENV)
    os.environ[POLL_INTERVAL_ENV] = chosen or POLL_INTERVAL_S
    try:
        yield
    finally:
        if chosen is None:
            os.environ.pop(POLL_INTERVAL_ENV, None)
