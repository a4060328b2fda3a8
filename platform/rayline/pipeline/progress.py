"""Per-epoch progress in the driver, read back from the metrics rank 0 logs to MLflow."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mlflow import MlflowClient

POLL_S = 2.0
SHOWN = ("train_loss", "train_accuracy", "train_rmse", "val_accuracy", "val_rmse", "samples_per_s")


@contextmanager
def epoch_progress(tracking_uri: str, run_id: str, epochs: int, report: Callable[[str, str], None]) -> Iterator[None]:
    """While the block runs, report each new epoch's metrics as ``[epoch] 3/10 train_loss=...``."""
    stop = threading.Event()
    client = MlflowClient(tracking_uri)

    def poll() -> None:
        shown = -1
        while not stop.wait(POLL_S):
            try:
                latest = max((m.step for m in client.get_metric_history(run_id, "train_loss")), default=-1)
                if latest <= shown:
                    continue
                metrics = client.get_run(run_id).data.metrics
            except Exception:  # progress is best effort: the run itself reports real failures
                continue
            shown = latest
            values = " ".join(f"{k}={metrics[k]:.4g}" for k in SHOWN if k in metrics)
            report("epoch", f"{latest + 1}/{epochs} {values}")

    thread = threading.Thread(target=poll, name="rayline-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=POLL_S)  # a poll stuck on an unreachable server is left to finish on its own
