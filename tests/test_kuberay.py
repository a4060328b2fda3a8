"""``deploy/kuberay/`` and the ``Dockerfile`` stay consistent with the specs they deploy and with the installed
Ray: the RayJob runs a shipped pipeline that loads, the RayService's Serve config is the one ``serving/digits.yaml``
exports (host and auth changed for a pod), every Ray container runs the image the Dockerfile builds, with token
auth and the tracking server. No Kubernetes cluster runs here: this checks the files, not a deployment."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from rayline.serving.config import serve_config
from rayline.spec import load_service_spec, load_spec

ROOT = Path(__file__).parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
IN_A_POD = {"host": "0.0.0.0", "auth": {"api_keys_env": "RAYLINE_API_KEYS"}}  # what the RayService changes


def _manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / name).read_text())


def _containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def _image_tag() -> str:
    return re.search(r"docker build -t (\S+) \.", (ROOT / "Dockerfile").read_text()).group(1)


@pytest.mark.parametrize("name", ["rayjob-digits.yaml", "rayservice-digits.yaml"])
def test_every_ray_container_runs_the_rayline_image_with_token_auth_and_the_tracking_server(name: str) -> None:
    manifest = _manifest(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    cluster = manifest["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    for container in _containers(cluster):
        assert container["image"] == _image_tag()
        assert {"MLFLOW_TRACKING_URI"} <= {variable["name"] for variable in container["env"]}
    workers = cluster["workerGroupSpecs"]
    assert all(group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] for group in workers)


def test_the_rayjob_runs_a_shipped_pipeline_that_loads() -> None:
    job = _manifest("rayjob-digits.yaml")
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:2] == ["rayline", "run"]
    assert set(command[3::2]) <= {"--set"}  # only overrides after the spec
    overrides = dict(setting.split("=", 1) for setting in command[4::2])
    spec = load_spec(ROOT / command[2], {key: yaml.safe_load(value) for key, value in overrides.items()})
    assert spec.train.scaling.use_gpu  # the worker group has GPUs: the pipeline asks for them
    cluster = job["spec"]["rayClusterSpec"]
    storage = {variable["name"] for container in _containers(cluster) for variable in container["env"]}
    assert "RAYLINE_STORAGE" in storage  # checkpoints go where every pod reaches


def test_the_rayservice_serves_what_the_service_spec_exports() -> None:
    service = _manifest("rayservice-digits.yaml")
    spec = load_service_spec(ROOT / "serving" / "digits.yaml", IN_A_POD)
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_config(spec)
    keys = {variable["name"] for container in _containers(service["spec"]["rayClusterSpec"])
            for variable in container["env"]}
    assert spec.auth.api_keys_env in keys


def test_the_image_installs_torch_first_and_carries_the_specs_the_manifests_name() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.index("torch==2.13.0") < dockerfile.index("pip install --no-cache-dir .")
    for directory in ("pipelines", "serving", "tuning", "platform"):
        assert f"COPY {directory} {directory}" in dockerfile
    assert "ENV RAY_AUTH_MODE=token" in dockerfile
