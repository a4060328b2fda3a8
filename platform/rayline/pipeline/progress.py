"""Per-epoch progress in the driver, read back from the metrics rank 0 logs to MLflow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mlflow import MlflowClient

from rayline.periodic import every

POLL_S = 2.0
SHOWN = ("train_loss", "train_accuracy", "train_rmse", "val_accuracy", "val_rmse", "samples_per_s")


@contextmanager
def epoch_progress(tracking_uri: str, run_id: str, epochs: int, report: Callable[[str, str], None]) -> Iterator[None]:
    """While the block runs, report each new epoch's metrics as ``[epoch] 3/10 train_loss=...``."""
    client = MlflowClient(tracking_uri)
    shown = -1

    def poll() -> None:
        nonlocal shown
        latest = max((m.step for m in client.get_metric_history(run_id, "train_loss")), default=-1)
        if latest > shown:
            metrics = client.get_run(run_id).data.metrics
            shown = latest
            values = " ".join(f"{k}={metrics[k]:.4g}" for k in SHOWN if k in metrics)
            report("epoch", f"{latest + 1}/{epochs} {values}")

    with every(POLL_S, poll, name="rayline-progress"):
        yield
