"""Exposure: every socket the platform listens on is loopback, and the job API refuses missing or wrong tokens."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

import rayline
from conftest import SERVE_MODEL, delete_applications
from rayline.cluster.embedded import read_state
from rayline.cluster.haproxy_loopback import harden
from rayline.cluster.processes import is_loopback, session_members, wait_until

JOB_DEADLINE_S = 120.0
# The one listener Ray 2.60 gives no way to keep on loopback: each Serve replica's inter-deployment gRPC server,
# `ray/serve/_private/replica.py` (`Replica._on_initialized`):
#     self._internal_grpc_port = add_port_to_grpc_server(self._server, "[::]:0")
# a hard-coded wildcard, on a server built by `create_grpc_server_with_interceptors`, which requires Ray's token.
# Exact, so that the test fails (and this goes) once Ray binds it like the rest.
BEYOND_LOOPBACK = {("ray::ServeReplica:exposure:exposure", "::")}


@pytest.fixture(scope="module")
def endpoint(platform: rayline.Platform, small_model: rayline.PipelineResult,
             serve_port: int) -> Iterator[rayline.Endpoint]:
    """One deployed service, so that Serve's ingress (HAProxy by default) and a replica are running."""
    spec = rayline.ServiceSpec(name="exposure", model=f"models:/{SERVE_MODEL}@champion", port=serve_port,
                               autoscaling={"min_replicas": 1, "max_replicas": 1}, resources={"num_cpus": 0.5})
    yield rayline.serve(spec, platform=platform)
    delete_applications(platform)


def _listeners(state_dir: Path) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of the platform's processes: the Ray
    session (HAProxy, which a Serve actor starts in a group of its own, included) and the MLflow server."""
    state = read_state(state_dir)
    assert state is not None
    members = {p.pid: p for group in (state.ray_group, state.mlflow_pid) for p in session_members(group)}
    found = []
    for connection in psutil.net_connections(kind="inet"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in members:
            try:
                name = members[connection.pid].name()
            except psutil.NoSuchProcess:
                continue
            found.append((connection.laddr.ip, connection.laddr.port, name))
    return found


def test_every_listening_socket_of_the_platform_is_loopback(platform: rayline.Platform, state_dir: Path,
                                                            endpoint: rayline.Endpoint, serve_port: int) -> None:
    state = read_state(state_dir)
    assert state is not None
    # What rayline opens itself is among them, so the check below is not vacuous. The endpoint's listener can be
    # between two HAProxy processes for a moment (Serve reloads HAProxy when the routes change), so it is polled.
    expected = {serve_port, state.dashboard_port, state.mlflow_port, state.ray_port}
    listeners: list[tuple[str, int, str]] = []

    def all_listening() -> bool:
        listeners[:] = _listeners(state_dir)
        return expected <= {port for _, port, _ in listeners}

    wait_until(all_listening, 30, f"listeners on {sorted(expected)}", lambda: str(listeners))
    if state.ingress == "haproxy":  # the endpoint, stats page and Prometheus exporter
        assert sum(name == "haproxy" for _, _, name in listeners) >= 3, listeners
    offenders = [(name, address, port) for address, port, name in listeners if not is_loopback(address)]
    assert {(name, address) for name, address, _ in offenders} == BEYOND_LOOPBACK, (
        "listening beyond loopback:\n" + "\n".join(f"{name} on {address}:{port}" for name, address, port in offenders))


def test_haproxy_config_rewrite_keeps_the_endpoint_host() -> None:
    config = ("defaults\n    timeout client 3600s\n"
              "frontend prometheus\n    bind :9101\n    mode http\n"
              "frontend http_frontend\n    bind *:8000\n"
              "listen stats\n  bind *:8404\n  stats enable\n")
    hardened = ("defaults\n    timeout http-request 10s\n    timeout client 3600s\n"
                "frontend prometheus\n    bind 127.0.0.1:9101\n    mode http\n"
                "frontend http_frontend\n    bind *:8000\n"
                "listen stats\n  bind 127.0.0.1:8404\n  stats enable\n")
    assert harden(config) == hardened
    assert harden(hardened) == hardened  # idempotent: Serve reloads rewrite the same file again


def _token() -> str:
    """The cluster's token: where ``rayline up`` had Ray's CLI create it (Ray's default location)."""
    return (Path.home() / ".ray" / "auth_token").read_text().strip()


@pytest.fixture(scope="module")
def jobs(platform: rayline.Platform) -> Iterator[httpx.Client]:
    assert platform.dashboard_url is not None
    with httpx.Client(base_url=platform.dashboard_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer not-the-token"}, 403)],
                         ids=["no-token", "wrong-token"])
def test_job_submission_without_the_token_is_refused_and_creates_nothing(
        jobs: httpx.Client, headers: dict[str, str], status: int) -> None:
    submission_id = f"refused-{uuid.uuid4().hex[:8]}"
    answer = jobs.post("/api/jobs/", json={"entrypoint": "echo should-not-run", "submission_id": submission_id},
                       headers=headers)
    assert answer.status_code == status, answer.text
    _assert_no_job(jobs, submission_id)


def test_the_job_sdk_with_a_wrong_token_is_refused(platform: rayline.Platform, jobs: httpx.Client) -> None:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    submission_id = f"refused-{uuid.uuid4().hex[:8]}"
    # Raised by the constructor already, which calls the API.
    with pytest.raises(AuthenticationError, match="Invalid authentication token"):
        JobSubmissionClient(platform.dashboard_url, headers={"Authorization": "Bearer not-the-token"}).submit_job(
            entrypoint="echo should-not-run", submission_id=submission_id)
    _assert_no_job(jobs, submission_id)


def _assert_no_job(jobs: httpx.Client, submission_id: str) -> None:
    """Asked with the right token, the job API knows no job ``submission_id``."""
    authorized = {"Authorization": f"Bearer {_token()}"}
    assert jobs.get(f"/api/jobs/{submission_id}", headers=authorized).status_code == 404
    listed = jobs.get("/api/jobs/", headers=authorized)
    assert listed.status_code == 200, listed.text
    assert submission_id not in {job.get("submission_id") for job in listed.json()}


def test_job_submission_with_the_token_runs(platform: rayline.Platform) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(platform.dashboard_url, headers={"Authorization": f"Bearer {_token()}"})
    job = client.submit_job(entrypoint="echo ok")
    wait_until(lambda: client.get_job_status(job).is_terminal(), JOB_DEADLINE_S, f"job {job}",
               lambda: client.get_job_logs(job))
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert "ok" in client.get_job_logs(job).split()
