"""A pipeline submitted with Ray's own CLI, ``ray job submit --working-dir DIR -- rayline run SPEC``, against the
platform's ``ray start --head`` cluster with token authentication on: the job's driver finds Ray, MLflow and the
storage in the cluster's environment, and the run is tracked and registered like any other. Without the token
mode, Ray's CLI refuses before anything runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rayline
from conftest import PIPELINES

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _submit(platform: rayline.Platform, job_dir: Path, *command: str, auth_mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", platform.dashboard_url, "--working-dir", str(job_dir),
         "--", *command], env={**os.environ, "RAY_AUTH_MODE": auth_mode}, capture_output=True, text=True,
        timeout=600)


def test_a_pipeline_submitted_as_a_ray_job_runs_on_the_platform(platform: rayline.Platform, tmp_path: Path,
                                                               mlflow_client) -> None:
    name = f"t{tmp_path.name[-8:]}"
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    shutil.copy(PIPELINES / "digits.yaml", job_dir / "digits.yaml")
    submitted = _submit(platform, job_dir, str(BIN / "rayline"), "run", "digits.yaml", "--set", "train.epochs=2",
                        "--set", f"tracking.experiment={name}", "--set", f"tracking.model_name={name}",
                        auth_mode="token")
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-2000:]
    assert "succeeded" in submitted.stdout, submitted.stdout[-3000:]
    experiment = mlflow_client.get_experiment_by_name(name).experiment_id
    [run] = mlflow_client.search_runs([experiment])
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] > 0.8
    assert mlflow_client.get_registered_model(name).latest_versions
    # checkpoints went to the platform's storage, not into the job's working directory
    assert list((Path(platform.storage_uri) / "train").glob(f"*-{run.info.run_id[:12]}/checkpoint_*"))
    assert not (job_dir / "storage").exists()


def test_submitting_without_the_token_mode_is_refused_before_anything_runs(platform: rayline.Platform,
                                                                           tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    marker = tmp_path / "ran"
    refused = _submit(platform, job_dir, "touch", str(marker), auth_mode="disabled")
    assert refused.returncode != 0
    assert "RAY_AUTH_MODE" in refused.stdout + refused.stderr, (refused.stdout + refused.stderr)[-2000:]
    assert not marker.exists()
