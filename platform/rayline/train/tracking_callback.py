"""Per-epoch metrics to MLflow from Ray Train's controller, so that training workers never talk to MLflow."""

from __future__ import annotations

import logging
import os
from typing import Any

from ray.train import Checkpoint, UserCallback

from rayline.tracking.metrics import FAIL_FAST, log_metrics

logger = logging.getLogger(__name__)


class EpochMetricsToMlflow(UserCallback):
    """After every ``ray.train.report``, log rank 0's metrics to the run at ``step=epoch``.

    Training never waits on the tracking server: an epoch whose metrics cannot be logged at once is skipped
    here, and the driver fills it in from the train loop's history when training is over."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        os.environ.update(FAIL_FAST)  # this runs in Ray Train's controller actor, which has nothing else to log
        rank0 = metrics[0]
        try:
            log_metrics(self.tracking_uri, self.run_id, {k: v for k, v in rank0.items() if k != "epoch"},
                        step=int(rank0["epoch"]))
        except Exception as err:  # the server is down or failing: the driver backfills this epoch
            logger.warning("epoch %s metrics not logged yet (%s): they are logged after training",
                           rank0["epoch"], type(err).__name__)
