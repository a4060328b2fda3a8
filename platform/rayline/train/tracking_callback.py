"""Per-epoch metrics to MLflow from Ray Train's controller, so that training workers never talk to MLflow."""

from __future__ import annotations

from typing import Any

from ray.train import Checkpoint, UserCallback

from rayline.tracking.metrics import log_metrics


class EpochMetricsToMlflow(UserCallback):
    """After every ``ray.train.report``, log rank 0's metrics to the run at ``step=epoch``."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        rank0 = metrics[0]
        log_metrics(self.tracking_uri, self.run_id, {k: v for k, v in rank0.items() if k != "epoch"},
                    step=int(rank0["epoch"]))
