"""Registering model versions and the promotion gate on the alias (``champion``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from rayline.errors import RaylineError
from rayline.tracking.lock import promotion_lock

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


def _history_tag(alias: str) -> str:
    return f"rayline.alias_history.{alias}"


def move_alias(tracking_uri: str, name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` at ``version``, remembering the holders it had (for :func:`rollback_alias`).

    Returns the version that held the alias before, if any.
    """
    client = MlflowClient(tracking_uri)
    client.get_model_version(name, version)  # raises if the version does not exist
    with promotion_lock(client, name):
        return _move(client, name, alias, version)


def _move(client: MlflowClient, name: str, alias: str, version: str) -> str | None:
    """:func:`move_alias`, for a caller that holds the model's promotion lock."""
    history = _history(client, name, alias)
    previous = history[-1] if history else None
    if previous != version:
        history.append(version)
    client.set_registered_model_tag(name, _history_tag(alias), ",".join(history[-50:]))
    client.set_registered_model_alias(name, alias, version)
    return previous


def rollback_alias(tracking_uri: str, name: str, alias: str) -> str:
    """Move ``alias`` back to the version that held it before the current one; return that version."""
    client = MlflowClient(tracking_uri)
    with promotion_lock(client, name):
        history = _history(client, name, alias)
        if len(history) < 2:
            raise ValueError(f"{name}@{alias} has no earlier version to roll back to")
        history.pop()
        client.set_registered_model_tag(name, _history_tag(alias), ",".join(history))
        client.set_registered_model_alias(name, alias, history[-1])
        return history[-1]


def _history(client: MlflowClient, name: str, alias: str) -> list[str]:
    tag = client.get_registered_model(name).tags.get(_history_tag(alias), "")
    return [v for v in tag.split(",") if v]


def _beats(new: float, old: float, mode: str) -> bool:
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if mode == "max" else new < old


def _holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``name@alias``, or None when the registry says the alias does not exist. Any other
    failure (the registry unreachable, refusing, erring) stops promotion: it never means "no champion yet"."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code == "INVALID_PARAMETER_VALUE" and f"alias {alias} not found" in err.message:
            return None
        raise RaylineError(f"promotion stopped: could not read which version holds {name}@{alias} "
                           f"({err.error_code}: {err.message[:200]}); the alias was not moved") from err


def promote_if_better(tracking_uri: str, name: str, version: str, alias: str, metric: str, mode: str,
                      value: float) -> PromotionDecision:
    """Move ``alias`` to ``version`` only if ``value`` beats the current holder's ``metric`` (ties keep it).

    Reading the holder, comparing and moving happen under the model's promotion lock, so versions offered at the
    same moment are decided one after the other, each against the holder the previous one left. The decision is
    written as the ``rayline.promotion`` tag on the version and on its run.
    """
    client = MlflowClient(tracking_uri)
    with promotion_lock(client, name):
        current = _holder(client, name, alias)
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
            _move(client, name, alias, version)
    client.set_model_version_tag(name, version, PROMOTION_TAG, decision.reason)
    run_id = client.get_model_version(name, version).run_id
    if run_id:
        client.set_tag(run_id, PROMOTION_TAG, decision.reason)
    return decision
