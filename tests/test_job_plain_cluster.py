"""A pipeline submitted as a Ray job to a plain ``ray start --head`` cluster, which knows nothing of rayline: without
a tracking URI and shared storage the job is refused in one line (it starts no tracking server and no second cluster
of its own, whose records would vanish with the job's temporary directory); given them through the job's runtime
environment (``ray job submit --runtime-env-json``, or ``rayline submit``, which fills them in), it trains on that
cluster and records into that server. Either way nothing the job started is alive once it has ended."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

import rayline
from conftest import PIPELINES
from rayline.cluster.embedded import RAY_POINTER, read_state
from rayline.cluster.processes import free_port, http_ok, session_members, stop_process_group, wait_until

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
ROLLED_OUT = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAYLINE_STORAGE")  # what `rayline up` puts in its cluster's env


def _plain_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in ROLLED_OUT}, "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``ray start --head`` as a user types it, with ports of its own: its dashboard URL and its session id."""
    pointer = RAY_POINTER.read_text() if RAY_POINTER.is_file() else None
    dashboard = free_port()
    ports = {flag: free_port() for flag in ("--port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                                            "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                            "--metrics-export-port")}
    log = tmp_path_factory.mktemp("plain") / "ray-start.log"
    with open(log, "w") as out:
        starter = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", f"--node-ip-address={HOST}", "--num-cpus=3",
             f"--dashboard-host={HOST}", f"--dashboard-port={dashboard}", "--include-dashboard=true",
             "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items())],
            env=_plain_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        assert starter.wait(timeout=120) == 0, log.read_text()[-3000:]
    url = f"http://{HOST}:{dashboard}"
    try:
        wait_until(lambda: http_ok(f"{url}/api/gcs_healthz"), 120, "the plain cluster's dashboard")
        yield url, starter.pid
    finally:
        stop_process_group(starter.pid, must_contain="ray")
        if pointer is None:
            RAY_POINTER.unlink(missing_ok=True)
        else:
            RAY_POINTER.write_text(pointer)


def _job_dir(tmp_path: Path) -> Path:
    root = tmp_path / "job"
    root.mkdir()
    shutil.copy(PIPELINES / "digits.yaml", root / "digits.yaml")
    return root


def _left_by_the_job(before: set[int], cluster_session: int, state_dir: Path) -> list[psutil.Process]:
    """Processes started since ``before`` that belong to neither the plain cluster's session nor the session
    platform's (its Ray session, its MLflow server) nor this test's process tree."""
    platform = read_state(state_dir)
    ours = {cluster_session, platform.ray_group, platform.mlflow_pid}
    mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    kept = {p.pid for session in ours for p in session_members(session)}
    left = []
    for pid in set(psutil.pids()) - before - mine - kept:
        try:
            process = psutil.Process(pid)
            # the kernel's own threads come and go (children of kthreadd, without a command line)
            if process.status() != psutil.STATUS_ZOMBIE and process.ppid() not in (0, 2) and process.cmdline():
                left.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return left


@contextmanager
def _nothing_left_by_the_job(cluster_session: int, state_dir: Path) -> Iterator[None]:
    """Around a job: afterwards, every process it started has exited (within a deadline). Whatever is left is
    stopped, whether the block or this check failed, so that nothing outlives the test."""
    before = set(psutil.pids())
    left: list[psutil.Process] = []

    def gone() -> bool:
        left[:] = _left_by_the_job(before, cluster_session, state_dir)
        return not left

    try:
        yield
        wait_until(gone, 30, "the job's processes to exit",
                   lambda: "still running: " + "; ".join(f"{p.pid} {' '.join(p.cmdline())[:200]}" for p in left))
    finally:
        for process in _left_by_the_job(before, cluster_session, state_dir):
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                stop_process_group(os.getsid(process.pid), must_contain="")


def _ray_job_submit(url: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(root),
                           "--", str(BIN / "rayline"), "run", "digits.yaml", *args],
                          env=_plain_env(), capture_output=True, text=True, timeout=600)


def _sets(name: str) -> list[str]:
    return [a for s in ("train.epochs=1", "train.scaling.num_workers=1", f"tracking.experiment={name}",
                        f"tracking.model_name={name}") for a in ("--set", s)]


def test_a_job_without_a_tracking_uri_is_refused_and_leaves_nothing(plain_cluster: tuple[str, int], state_dir: Path,
                                                                    tmp_path: Path) -> None:
    url, session = plain_cluster
    with _nothing_left_by_the_job(session, state_dir):
        done = _ray_job_submit(url, _job_dir(tmp_path), *_sets(f"t{tmp_path.name[-8:]}"))
        output = done.stdout + done.stderr
        assert done.returncode != 0 and "failed" in output, output[-3000:]
        [line] = {line for line in output.splitlines() if line.startswith("error:")}  # one line (Ray may echo it)
        assert "MLFLOW_TRACKING_URI" in line and "RAYLINE_STORAGE" in line, line
        assert "--runtime-env-json" in line and "rayline submit" in line, line


def test_rayline_submit_fills_in_the_uri_and_storage(plain_cluster: tuple[str, int], platform: rayline.Platform,
                                                     state_dir: Path, tmp_path: Path, mlflow_client) -> None:
    url, session = plain_cluster
    name = f"t{tmp_path.name[-8:]}"
    storage = tmp_path / "shared-storage"
    root = _job_dir(tmp_path)
    with _nothing_left_by_the_job(session, state_dir):
        done = subprocess.run([str(BIN / "rayline"), "submit", "digits.yaml", "--address", url, "--working-dir",
                               ".", "--command", str(BIN / "rayline"), "--tracking-uri", platform.tracking_uri,
                               "--storage", str(storage), *_sets(name)],
                              cwd=root, env=_plain_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    [run] = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(name).experiment_id])
    assert run.info.status == "FINISHED" and list((storage / "train").glob("*/checkpoint_*"))
