"""Registering model versions and the promotion gate on the alias (``champion``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

PROMOTION_TAG = "rayline.promotion"


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the new version took the alias, and why."""

    promoted: bool
    version: str
    previous_version: str | None
    reason: str


def register(tracking_uri: str, model_uri: str, name: str) -> str:
    """Register ``model_uri`` (a logged model) as a new version of ``name``; return the version number."""
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.register_model(model_uri, name).version


def _beats(new: float, old: float, mode: str) -> bool:
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if mode == "max" else new < old


def promote_if_better(tracking_uri: str, name: str, version: str, alias: str, metric: str, mode: str,
                      value: float) -> PromotionDecision:
    """Move ``alias`` to ``version`` only if ``value`` beats the current holder's ``metric`` (ties keep it).

    The decision is written as the ``rayline.promotion`` tag on the version and on its run.
    """
    client = MlflowClient(tracking_uri)
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is None:
        decision = PromotionDecision(True, version, None, f"no {alias} yet: version {version} takes it "
                                     f"({metric}={value:.4f})")
    else:
        old = client.get_run(current.run_id).data.metrics.get(metric, float("nan"))
        better = _beats(value, old, mode)
        comparison = f"{metric} {value:.4f} vs {old:.4f} ({mode} wins)"
        decision = PromotionDecision(
            better, version, current.version,
            f"version {version} {'beats' if better else 'does not beat'} {alias} version {current.version}: "
            f"{comparison}",
        )
    if decision.promoted:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, PROMOTION_TAG, decision.reason)
    run_id = client.get_model_version(name, version).run_id
    if run_id:
        client.set_tag(run_id, PROMOTION_TAG, decision.reason)
    return decision
