"""``cluster.yaml`` is a cluster-launcher config Ray itself accepts: Ray's own schema and default filling
(``prepare_config``, ``validate_config``), and what rayline needs of it. ``cluster-local.yaml``, its variant on
Ray's fake multi-node provider, passes the same schema as it is: the autoscaler of ``ray start
--autoscaling-config`` reads the file without filling defaults (and Ray's wheel lacks the fake provider's
defaults file that ``prepare_config`` would merge)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).parents[1] / "cluster.yaml"
LOCAL_YAML = CLUSTER_YAML.with_name("cluster-local.yaml")


@pytest.fixture
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def local_config() -> dict[str, Any]:
    return yaml.safe_load(LOCAL_YAML.read_text())


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


def test_rays_schema_accepts_the_local_config_as_it_is(config: dict[str, Any], local_config: dict[str, Any]) -> None:
    validate_config(copy.deepcopy(local_config))
    # every field Ray's default filling gives the cloud config: the autoscaler reads them all (a missing
    # worker_start_ray_commands passes the schema, then fails the autoscaler with a KeyError)
    assert set(local_config) == set(prepare_config(config))


def test_the_local_cluster_scales_a_worker_type_the_head_lacks_and_drops_idle_nodes_fast(
        local_config: dict[str, Any]) -> None:
    assert local_config["provider"]["type"] == "fake_multinode"
    types = local_config["available_node_types"]
    assert local_config["head_node_type"] == "ray.head.default"  # the name the fake provider tags its head with
    head = types.pop("ray.head.default")
    assert head["resources"]["CPU"] >= 1 and head["max_workers"] == 0
    [worker] = types.values()
    assert set(worker["resources"]) - set(head["resources"]) == {"fake_gpu", "object_store_memory"}
    assert worker["min_workers"] == 0 < worker["max_workers"] <= local_config["max_workers"]
    assert local_config["idle_timeout_minutes"] <= 0.1  # tests/test_autoscaling.py waits for the removal


@pytest.mark.parametrize(("where", "key", "broken"), [
    ((), "idle_timeout_mins", 0.1),  # a misspelt field
    (("available_node_types", "gpu_worker"), "min_workers", "many"),
    (("available_node_types", "gpu_worker", "resources"), "CPU", "one"),
])
def test_a_local_config_rays_schema_rejects_is_refused(local_config: dict[str, Any], where: tuple[str, ...],
                                                       key: str, broken: object) -> None:
    """``ray start --autoscaling-config`` does not check: given ``min_workers: many`` it starts the head, and its
    autoscaler fails every round in monitor.log with ``TypeError: '<' not supported between instances of 'int'
    and 'str'``. Ray's schema names the field."""
    section = local_config
    for name in where:
        section = section[name]
    section[key] = broken
    with pytest.raises(jsonschema.ValidationError, match=f"{key}|{broken}"):
        validate_config(local_config)
