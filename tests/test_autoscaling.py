"""``cluster-local.yaml`` autoscales: on Ray's fake multi-node provider, a head with 1 CPU and no ``fake_gpu``
gets a ``gpu_worker`` node for each of a pipeline's two Train workers, runs it, and loses the nodes once they have
been idle for ``idle_timeout_minutes``. Node counts come from the cluster's state API.

The cluster runs in a session of its own, on its own ports, beside the test session's platform, whose MLflow server
it tracks to (in its environment, as ``cluster.yaml`` sets it on a cloud cluster); only its processes are stopped.
The pipeline is submitted as a Ray job, ``rayline run`` of the shipped spec: on a cluster with an autoscaler it
accepts a worker that no alive node can hold, since the autoscaler may add one. (Not with ``rayline submit``'s
upload: the fake provider's nodes share the head's session directory on this one disk, and a node unpacking the
job's working directory there replaced it under the running driver.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import rayline
from conftest import PIPELINES
from rayline.cluster import jobs
from rayline.cluster.embedded import RAY_POINTER
from rayline.cluster.processes import free_port, http_ok, session_members, stop_process_group, wait_until
from rayline.pipeline import submit

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).parents[1] / "cluster-local.yaml"
RAY = str(Path(sys.executable).with_name("ray"))
WORKERS = 2  # one per gpu_worker node: cluster-local.yaml's max_workers
EPOCHS = 2
START_DEADLINE_S = 120
JOB_DEADLINE_S = 300
IDLE_DEADLINE_S = 90


@dataclass
class LocalCluster:
    """A running cluster of ``cluster-local.yaml``: its GCS address, dashboard and the session of its processes."""

    address: str
    dashboard_url: str
    session: int

    def worker_nodes(self) -> int:
        """How many worker nodes (the head aside) are alive, by the cluster's state API."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard_url)  # (filtering by state there fails on the dead nodes)
        return sum(node.state == "ALIVE" and not node.is_head_node for node in nodes)

    def raylets(self) -> int:
        """How many raylets (one a node) the cluster's processes hold: a removed node's are stopped."""
        return sum("raylet/raylet" in " ".join(p.info["cmdline"] or ()) for p in session_members(self.session))


@pytest.fixture
def cluster(tmp_path: Path, platform: rayline.Platform) -> Iterator[LocalCluster]:
    """``ray start --head`` with cluster-local.yaml's autoscaler, the provider pointed at this cluster's port; the
    platform's MLflow server and storage in the nodes' environment."""
    from ray.util import get_node_ip_address

    address = f"{get_node_ip_address()}:{free_port()}"  # the fake provider's nodes join on the machine's address
    config = yaml.safe_load(CONFIG.read_text())
    config["provider"]["gcs_address"] = address
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(config))
    dashboard_port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_ADDRESS": address,  # Ray Train's placement-group cleaner finds its cluster by it
           "MLFLOW_TRACKING_URI": platform.tracking_uri, "RAYLINE_STORAGE": str(tmp_path / "storage")}
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)  # only where no token exists; its stdout is the token
    command = [RAY, "start", "--head", f"--port={address.rsplit(':', 1)[1]}", "--num-cpus=1",
               f"--autoscaling-config={tmp_path / 'cluster.yaml'}", "--disable-usage-stats",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
               *(f"{flag}={free_port()}" for flag in (
                   "--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                   "--runtime-env-agent-port", "--metrics-export-port"))]
    pointer = RAY_POINTER.read_text() if RAY_POINTER.is_file() else None  # the test session's cluster
    with open(tmp_path / "ray-start.log", "w") as log:
        starter = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert starter.wait(timeout=START_DEADLINE_S) == 0, (tmp_path / "ray-start.log").read_text()
        dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        wait_until(lambda: http_ok(f"{dashboard_url}/api/gcs_healthz"), START_DEADLINE_S, "the cluster's dashboard")
        yield LocalCluster(address, dashboard_url, starter.pid)
    finally:
        # GCS, raylet and autoscaler take over 8 s to go on SIGTERM; nothing of this cluster's is kept
        stop_process_group(starter.pid, must_contain="ray", grace_s=2)
        if pointer is None:  # what a plain ray.init() connects to: not this cluster, which is gone
            RAY_POINTER.unlink(missing_ok=True)
        else:
            RAY_POINTER.write_text(pointer)


def test_the_autoscaler_adds_worker_nodes_for_a_pipeline_and_removes_them_when_idle(
        cluster: LocalCluster, tmp_path: Path, mlflow_client, unique: str) -> None:
    started = time.monotonic()
    changes: list[tuple[float, int]] = []  # (seconds since the start, worker nodes alive), at every change

    def workers_are(count: int) -> bool:
        alive = cluster.worker_nodes()
        if not changes or changes[-1][1] != alive:
            changes.append((round(time.monotonic() - started, 1), alive))
        return alive == count

    def timeline() -> str:
        return "Worker nodes: " + ", ".join(f"{n} at {t} s" for t, n in changes)

    assert workers_are(0) and cluster.raylets() == 1  # min_workers: 0, and nothing asked yet
    overrides = [f"train.epochs={EPOCHS}", f"train.scaling.num_workers={WORKERS}",
                 "train.scaling.resources_per_worker={CPU: 1, fake_gpu: 1}", f"tracking.experiment={unique}",
                 f"tracking.model_name={unique}"]
    client = jobs.client(cluster.dashboard_url)
    job_id = client.submit_job(entrypoint=submit.entrypoint(str(PIPELINES / "digits.yaml"), overrides, None,
                                                            str(Path(sys.executable).with_name("rayline"))))
    with ThreadPoolExecutor(1) as pool:
        followed = pool.submit(jobs.follow, client, job_id)
        wait_until(lambda: workers_are(WORKERS) or followed.done(), START_DEADLINE_S, "the gpu_worker nodes",
                   timeline)
        scaled_up = changes[-1][0]
        assert cluster.raylets() == 1 + WORKERS, timeline()  # nodes of their own, from the fake provider
        job = followed.result(timeout=JOB_DEADLINE_S)
    finished = round(time.monotonic() - started, 1)
    assert job.succeeded, f"{timeline()}. Job {job.status}: {job.message}; its log ends: {job.logs[-3000:]}"
    [run] = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(unique).experiment_id])
    workers = mlflow_client.get_metric_history(run.info.run_id, "workers")
    assert sorted((m.step, m.value) for m in workers) == [(epoch, WORKERS) for epoch in range(EPOCHS)]
    assert run.data.metrics["test_accuracy"] > 0.5  # it learned: chance is 0.1
    wait_until(lambda: workers_are(0), IDLE_DEADLINE_S, "the idle nodes' removal", timeline)
    wait_until(lambda: cluster.raylets() == 1, 30, "the removed nodes' raylets to exit")
    print(f"{WORKERS} worker nodes at {scaled_up} s, job done at {finished} s, "
          f"back to the head alone at {changes[-1][0]} s. {timeline()}")
