"""Everything MLflow: runs, params, metrics, inputs, artifacts, the registry and the promotion gate."""

from rayline.tracking.liveness import describe_driver, driver_alive, driver_tags, heartbeat
from rayline.tracking.metrics import backfill_epochs, log_metrics
from rayline.tracking.models import log_pyfunc
from rayline.tracking.registry import (
    PROMOTION_TAG,
    PromotionDecision,
    move_alias,
    promote_if_better,
    register,
    rollback_alias,
)
from rayline.tracking.runs import (
    RUN_NAME_TAG,
    cost_metrics,
    end_run,
    flatten,
    latest_named_run,
    log_dataset,
    log_params,
    log_text,
    set_tags,
    start_run,
)

__all__ = [
    "PROMOTION_TAG",
    "RUN_NAME_TAG",
    "PromotionDecision",
    "backfill_epochs",
    "cost_metrics",
    "describe_driver",
    "driver_alive",
    "driver_tags",
    "end_run",
    "flatten",
    "heartbeat",
    "latest_named_run",
    "log_dataset",
    "log_metrics",
    "log_params",
    "log_pyfunc",
    "log_text",
    "move_alias",
    "promote_if_better",
    "register",
    "rollback_alias",
    "set_tags",
    "start_run",
]
