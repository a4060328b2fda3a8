"""A named run while an earlier attempt under the same name is still running is refused, naming that attempt: two
live attempts would share one checkpoint directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import rayline
from conftest import ROOT
from rayline.cluster.processes import wait_until

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(name: str, state_dir: Path, *extra: str) -> list[str]:
    sets = ["train.epochs=20", "train.scaling.num_workers=1", "model.name=fault_models:SlowMLP",
            "model.params={step_s: 0.2, hidden: [32]}", "preprocess=[]", f"tracking.experiment={name}",
            f"tracking.model_name={name}"]
    return [str(BIN / "rayline"), "run", "pipelines/digits.yaml", *(a for s in sets for a in ("--set", s)),
            "--run-name", "live", "--state-dir", str(state_dir), *extra]


def test_a_run_name_whose_attempt_is_running_is_refused(platform: rayline.Platform, state_dir: Path, unique: str,
                                                        mlflow_client) -> None:
    first = subprocess.Popen(_run(unique, state_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        running: list = []

        def started() -> bool:
            experiment = mlflow_client.get_experiment_by_name(unique)
            running[:] = mlflow_client.search_runs([experiment.experiment_id]) if experiment else []
            return bool(running) and first.poll() is None

        wait_until(started, 180, "the first attempt's MLflow run")
        [attempt] = running
        second = subprocess.run(_run(unique, state_dir), cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert first.poll() is None, "the first attempt ended before the second was refused: make it slower"
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        [line] = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert f"'live' is still running (run {attempt.info.run_id}" in line, line
        assert len(mlflow_client.search_runs([attempt.info.experiment_id])) == 1  # the refused one logged nothing
    finally:
        first.kill()  # it would train for minutes: what is tested is that it was still running
        first.communicate()
