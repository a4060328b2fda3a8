"""The promotion gate under concurrency, on the session's tracking server (sqlite): versions that finish together
are compared and moved one at a time per model, so the best one holds the alias and the alias history has every
move in order (what ``rollback`` walks back)."""

from __future__ import annotations

from pathlib import Path

import rayline
from promotion_race import offered, race, race_and_check, register_versions
from rayline.tracking import promote_if_better


def test_concurrent_promotions_leave_the_best_version_and_every_move(platform: rayline.Platform, mlflow_client,
                                                                    unique: str, tmp_path: Path) -> None:
    race_and_check(mlflow_client, platform.tracking_uri, unique, tmp_path)


def test_rollback_after_concurrent_promotions_goes_to_the_holder_before(platform: rayline.Platform, mlflow_client,
                                                                        unique: str, tmp_path: Path) -> None:
    values = [0.50, 0.95, 0.80, 0.90]
    register_versions(mlflow_client, unique, values)
    assert promote_if_better(platform.tracking_uri, unique, "1", "champion", "test_accuracy", "max", 0.5).promoted
    race(platform.tracking_uri, {unique: dict(list(offered(values).items())[1:])}, tmp_path)
    history = mlflow_client.get_registered_model(unique).tags["rayline.alias_history.champion"].split(",")
    assert history[0] == "1" and history[-1] == "2", history
    assert rayline.rollback(unique, tracking_uri=platform.tracking_uri) == history[-2]
    assert mlflow_client.get_model_version_by_alias(unique, "champion").version == history[-2]
