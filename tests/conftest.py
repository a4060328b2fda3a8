"""One embedded platform (Ray head + MLflow server) for the whole test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
PIPELINES = ROOT / "pipelines"
SERVE_MODEL = "serve-test"

# Train workers import user models from tests/ (e.g. fault_models:FaultOnceMLP): Ray's processes inherit this.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
# ... and the registry may make replicas load those test models: the operator's allowlist names their module.
os.environ["RAYLINE_MODEL_MODULES"] = "fault_models"
# The hash steps' secret key (tabular.yaml hashes a column); the platform's Ray processes inherit it, as replicas
# must have it to load a model with keyed hash steps.
os.environ["RAYLINE_HASH_KEY"] = "rayline-tests-hash-key-5d1c8a0e"
for variable in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAYLINE_STORAGE"):
    os.environ.pop(variable, None)

import rayline  # noqa: E402  (after the environment above: Ray reads it at import)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rayline-state")


@pytest.fixture(scope="session")
def platform(state_dir: Path) -> Iterator[rayline.Platform]:
    """A real local Ray cluster and a real MLflow tracking server, started once."""
    import mlflow

    started = rayline.up(state_dir, num_cpus=4)
    started.init_ray()
    mlflow.set_tracking_uri(started.tracking_uri)
    yield started
    import ray

    from rayline.cluster.embedded import read_state
    from rayline.cluster.processes import session_members, wait_until

    ray.shutdown()
    stopped = read_state(state_dir)
    ray_session = stopped.ray_group
    assert rayline.down(state_dir)
    # Ray's pointer to "the latest cluster" no longer names the stopped one: a plain ray.init() starts afresh.
    from rayline.cluster.embedded import RAY_POINTER

    assert not (RAY_POINTER.is_file() and RAY_POINTER.read_text().strip().endswith(f":{stopped.ray_port}"))
    assert not rayline.status(state_dir)["running"]
    # Everything `ray start` spawned is gone, the HAProxy that Serve started in a process group of its own included
    # (a process that `down` has killed may still be exiting: it gets a few seconds to go).
    left: list[str] = []

    def all_gone() -> bool:
        left[:] = [f"pid {p.pid}: {p.info['cmdline']}" for p in session_members(ray_session)]
        return not left

    wait_until(all_gone, 15, "the Ray session's processes to exit", lambda: f"still running: {left}")


@pytest.fixture(scope="session")
def mlflow_client(platform: rayline.Platform):
    from mlflow import MlflowClient

    return MlflowClient(platform.tracking_uri)


@pytest.fixture(scope="session")
def small_model(platform: rayline.Platform) -> rayline.PipelineResult:
    """A small digits model (1 worker, 3 epochs), the champion of ``serve-test``: what the serving tests serve."""
    return rayline.run(PIPELINES / "digits.yaml", {
        "model": {"name": "mlp", "params": {"hidden": [64]}}, "train.epochs": 3, "train.scaling.num_workers": 1,
        "tracking.experiment": SERVE_MODEL, "tracking.model_name": SERVE_MODEL,
    }, platform=platform)


@pytest.fixture(scope="session")
def serve_port(platform: rayline.Platform) -> int:
    """Serve's HTTP port for the session: Serve stays up between test modules, which delete their applications."""
    from rayline.cluster.processes import free_port

    return free_port()


def delete_applications(platform: rayline.Platform) -> None:
    """Remove every Serve application, keeping Serve itself (and its port) running."""
    from ray import serve

    from rayline.serving import shutdown

    for name in serve.status().applications:
        shutdown(platform, name)


@pytest.fixture
def unique() -> str:
    """A fresh name for experiments and registered models, so tests never see each other's runs."""
    return f"t{uuid.uuid4().hex[:8]}"


def run_cli(*args: str, state_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``rayline ARGS --state-dir STATE`` as a subprocess of this interpreter's environment."""
    command = [str(Path(sys.executable).with_name("rayline")), *args, "--state-dir", str(state_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def run_cluster_script(script: Path, *args: str, timeout: float = 900) -> dict:
    """``python SCRIPT ARGS`` in a session of its own (a script that starts a Ray cluster: a driver joins one
    cluster only, and this process is the platform's); the JSON on its last line. Whatever it leaves running
    (its cluster's processes, should it hang) is stopped."""
    from rayline.cluster.processes import stop_process_group

    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    process = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        stop_process_group(process.pid, must_contain="ray")
    assert process.returncode == 0, stderr[-5000:]
    return json.loads(stdout.strip().splitlines()[-1])
