"""Logging metrics to a run by id, over the tracking server's URI (usable from any worker)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log ``metrics`` at ``step`` in one request."""
    stamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), stamp, step) for key, value in metrics.items()]
    MlflowClient(tracking_uri).log_batch(run_id, metrics=batch)
