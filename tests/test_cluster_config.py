"""``cluster.yaml`` is a cluster-launcher config Ray itself accepts: Ray's own schema and default filling
(``prepare_config``, ``validate_config``), and what rayline needs of it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).parents[1] / "cluster.yaml"


@pytest.fixture
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_rays_schema_accepts_the_cluster_config(config: dict[str, Any]) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))


def test_the_cluster_has_a_cpu_head_and_gpu_workers_that_scale(config: dict[str, Any]) -> None:
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no training on the head
    workers = [spec for name, spec in types.items() if name != config["head_node_type"]]
    assert [spec["node_config"]["InstanceType"].startswith("g") for spec in workers] == [True]
    assert workers[0]["min_workers"] < workers[0]["max_workers"] <= config["max_workers"]


def test_every_node_runs_with_token_auth_the_tracking_server_and_shared_storage(config: dict[str, Any]) -> None:
    head, worker = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert "mlflow server" in head and "--dashboard-host=127.0.0.1" in head
    for commands in (head, worker):
        assert "RAY_AUTH_MODE=token" in commands and "MLFLOW_TRACKING_URI=" in commands
        assert "RAYLINE_STORAGE=s3://" in commands  # checkpoints every node reaches
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("torch==2.13.0" in command for command in config["setup_commands"])


def test_a_config_rays_schema_rejects_is_refused(config: dict[str, Any]) -> None:
    config["available_node_types"]["head"]["min_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError, match="many"):
        validate_config(prepare_config(config))
