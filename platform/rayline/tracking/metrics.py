"""Logging metrics to a run by id, over the tracking server's URI (usable from any worker), and filling in the
epochs that an outage of the tracking server kept out of a run."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

from mlflow import MlflowClient
from mlflow.entities import Metric

from rayline.errors import RaylineError

# While training, a metric that cannot reach the server is skipped rather than retried for minutes (MLflow's
# default): the epoch's metrics are filled in after training by :func:`backfill_epochs`.
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
OUTAGE_TAG = "rayline.tracking_outage"
OUTAGE_WAIT_S = float(os.environ.get("RAYLINE_TRACKING_OUTAGE_WAIT_S", "600"))


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log ``metrics`` at ``step`` in one request."""
    stamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), stamp, step) for key, value in metrics.items()]
    MlflowClient(tracking_uri).log_batch(run_id, metrics=batch)


def backfill_epochs(tracking_uri: str, run_id: str, history: Sequence[Mapping[str, float]],
                    wait_s: float = OUTAGE_WAIT_S) -> list[int]:
    """Log the epochs of ``history`` (one metrics dict per epoch, with ``epoch``) that the run lacks, tag the run
    ``OUTAGE_TAG`` saying which, and return them.

    Waits up to ``wait_s`` for the tracking server to answer (it may be coming back from an outage), then raises
    a :class:`RaylineError` saying what could not be logged."""
    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            logged = {m.step for m in client.get_metric_history(run_id, "train_loss")}
            break
        except Exception as err:  # unreachable, or answering errors while it starts
            if time.monotonic() > deadline:
                raise RaylineError(f"the tracking server {tracking_uri} did not answer for {wait_s:.0f} s after "
                                   f"training finished, so the run's metrics and model were not logged "
                                   f"({type(err).__name__}); the checkpoints are kept in storage") from None
            time.sleep(1.0)
    missing = [epoch for epoch in history if int(epoch["epoch"]) not in logged]
    stamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), stamp, int(epoch["epoch"]))
             for epoch in missing for key, value in epoch.items() if key != "epoch"]
    for start in range(0, len(batch), 1000):  # MLflow's limit per request
        client.log_batch(run_id, metrics=batch[start:start + 1000])
    late = [int(epoch["epoch"]) for epoch in missing]
    if late:
        client.set_tag(run_id, OUTAGE_TAG, f"epochs {', '.join(map(str, late))} were logged after training, "
                                           f"from the train loop's history: the tracking server was unreachable")
    return late
