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
    SUBMISSION_TAG,
    TrackedRun,
    cost_metrics,
    end_run,
    find_tagged_run,
    flatten,
    latest_named_run,
    log_dataset,
    log_params,
    log_text,
    run_url,
    set_tags,
    start_run,
    tags_filter,
)

__all__ = [
    "PROMOTION_TAG",
    "RUN_NAME_TAG",
    "SUBMISSION_TAG",
    "PromotionDecision",
    "TrackedRun",
    "backfill_epochs",
    "cost_metrics",
    "describe_driver",
    "driver_alive",
    "driver_tags",
    "end_run",
    "find_tagged_run",
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
    "run_url",
    "set_tags",
    "start_run",
    "tags_filter",
]
