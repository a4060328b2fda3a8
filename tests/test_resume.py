"""A worker process dies mid-run: Ray Train restarts the group and the loop resumes from the latest checkpoint."""

from __future__ import annotations

from pathlib import Path

import rayline
from conftest import PIPELINES


def test_run_resumes_from_checkpoint_after_worker_crash(platform: rayline.Platform, tmp_path: Path, unique: str,
                                                       mlflow_client) -> None:
    marker = tmp_path / "crashed"
    # digits: 1,282 training rows over 2 workers in batches of 64 = 11 steps per epoch; step 40 is in epoch 3.
    result = rayline.run(PIPELINES / "digits.yaml", {
        "model": {"name": "fault_models:CrashOnceMLP",
                  "params": {"marker": str(marker), "crash_at_step": 40, "hidden": [64]}},
        "preprocess": [], "train.epochs": 5, "train.batch_size": 64, "train.checkpoint_every": 1,
        "train.max_failures": 1, "tracking.experiment": unique, "tracking.model_name": unique,
    }, ray_address=platform.ray_address, tracking_uri=platform.tracking_uri, storage_uri=platform.storage_uri)
    assert marker.read_text() == "crashed"  # the crash really happened
    assert result.resumed_from_epoch is not None and result.resumed_from_epoch > 0
    assert result.metrics["test_accuracy"] > 0.8
    run = mlflow_client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["resumed_from_epoch"] == result.resumed_from_epoch
