"""The same application through Ray's own CLI: `rayline serve --export` then `serve deploy`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml
from sklearn.datasets import load_digits

import rayline
from conftest import SERVE_MODEL, run_cli
from rayline.cluster.processes import wait_until
from rayline.serving import shutdown


@pytest.fixture
def serve_down(platform: rayline.Platform) -> Iterator[None]:
    """`serve deploy` is declarative (it replaces every application): the last Serve module, it stops Serve."""
    yield
    shutdown(platform)


def test_serve_deploy_runs_an_exported_spec(platform: rayline.Platform, state_dir: Path,
                                            small_model: rayline.PipelineResult, tmp_path: Path,
                                            serve_port: int, serve_down: None) -> None:
    port = serve_port
    spec = {"name": "raycli", "model": f"models:/{SERVE_MODEL}@champion", "port": port,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1}, "resources": {"num_cpus": 0.5}}
    (tmp_path / "raycli.yaml").write_text(yaml.safe_dump(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # else the export records this shell's registry
        exported = run_cli("serve", str(tmp_path / "raycli.yaml"), "--export", str(tmp_path / "raycli.serve.yaml"),
                           state_dir=state_dir)
    assert exported.returncode == 0, exported.stderr[-2000:]
    # No tracking URI in the config: the replicas find the registry through the cluster's environment.
    assert "MLFLOW_TRACKING_URI" not in (tmp_path / "raycli.serve.yaml").read_text()
    deployed = subprocess.run(
        [str(Path(sys.executable).with_name("serve")), "deploy", str(tmp_path / "raycli.serve.yaml"),
         "--address", platform.dashboard_url],
        env={**os.environ, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr[-2000:]

    rows = load_digits(as_frame=True).frame.drop(columns=["target"]).head(5)
    url = f"http://127.0.0.1:{port}/v1/models/{SERVE_MODEL}/predict"

    def answered() -> bool:
        try:
            return httpx.post(url, json={"instances": rows.to_dict(orient="records")}, timeout=30).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answered, 180, "the application deployed by `serve deploy`")
    answer = httpx.post(url, json={"instances": rows.to_dict(orient="records")}, timeout=30).json()
    offline = mlflow.pyfunc.load_model(small_model.model_uri).predict(rows)["prediction"]
    assert answer["model_version"] == small_model.model_version
    assert [p["prediction"] for p in answer["predictions"]] == [int(p) for p in offline]
