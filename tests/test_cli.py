"""`rayline` as a subprocess against the session platform, and preprocessing parity of what it logged."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
import torch
from safetensors.torch import load_file

import rayline
from conftest import run_cli
from rayline.data import prepare
from rayline.models import build_model
from rayline.packaged.layout import PREPROCESSOR, WEIGHTS, package_dir


@pytest.fixture(scope="module")
def tabular_run(platform: rayline.Platform, state_dir: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    name = "penguins-cli"
    done = run_cli("run", "pipelines/tabular.yaml", "--set", f"tracking.model_name={name}",
                   "--set", f"tracking.experiment={name}", state_dir=state_dir)
    return done, name


def test_cli_runs_the_tabular_pipeline_to_its_bar(tabular_run) -> None:
    done, name = tabular_run
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("[spec]", "[data]", "[train]", "[package]", "[register]"):
        assert stage in done.stdout
    accuracy = float(re.search(r"test_accuracy\s+([0-9.]+)", done.stdout).group(1))
    assert accuracy >= 0.95
    assert f"models:/{name}/1" in done.stdout
    assert "promotion      PROMOTED" in done.stdout
    assert re.search(r"MLflow UI\s+http://127\.0\.0\.1:\d+/#/experiments/\d+/runs/[0-9a-f]{32}", done.stdout)


def test_logged_model_matches_the_in_training_preprocessing(tabular_run, platform: rayline.Platform) -> None:
    """Same rows through (a) Ray Data + the preprocessor fitted in training and (b) the logged pyfunc."""
    done, name = tabular_run
    assert done.returncode == 0
    spec = rayline.load_spec("pipelines/tabular.yaml")
    prepared = prepare(spec, platform.storage_uri)  # the split and the fit are deterministic
    rows = prepared.raw_splits["test"].to_pandas()
    model_uri = f"models:/{name}/1"
    logged_dir = package_dir(mlflow.artifacts.download_artifacts(model_uri))
    logged_state = json.loads((logged_dir / PREPROCESSOR).read_text())
    assert logged_state == json.loads(prepared.preprocessor.to_json())

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    batch = prepared.preprocessor.transform_dataset(ray.data.from_pandas(rows)).take_batch(len(rows))
    module = build_model(spec.model, prepared.preprocessor.num_features, prepared.preprocessor.num_outputs)
    module.load_state_dict(load_file(str(logged_dir / WEIGHTS)))
    with torch.inference_mode():
        in_training = module.eval()(torch.from_numpy(np.stack(batch["features"]))).argmax(1).numpy()

    served = mlflow.pyfunc.load_model(model_uri).predict(rows[prepared.preprocessor.input_columns])
    assert list(served["prediction"]) == list(prepared.preprocessor.decode(in_training))
    assert list(batch[spec.data.label]) == [prepared.preprocessor.classes.index(v) for v in rows[spec.data.label]]


def test_cli_refuses_a_bad_spec_with_one_line_and_exit_2(state_dir: Path) -> None:
    done = run_cli("run", "pipelines/digits.yaml", "--set", "train.epochz=1", state_dir=state_dir)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("error: pipelines/digits.yaml: train.epochz: unknown key "
                                                    "(did you mean 'epochs'?)")


def test_cli_status_reports_the_running_platform(platform: rayline.Platform, state_dir: Path) -> None:
    done = run_cli("status", state_dir=state_dir)
    assert done.returncode == 0
    info = json.loads(done.stdout)
    assert info["running"] and info["tracking_uri"] == platform.tracking_uri
    assert info["ray_address"] == platform.ray_address
