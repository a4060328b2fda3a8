"""Where a pipeline runs: the embedded local platform, or an existing Ray cluster and MLflow server."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import psutil
import ray

from rayline import raycompat
from rayline.cluster import embedded
from rayline.cluster.processes import is_loopback
from rayline.errors import RaylineError

DEFAULT_STATE_DIR = ".rayline"
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in the environment of a job's driver


@dataclass(frozen=True)
class Platform:
    """Addresses every stage uses. ``storage_uri`` must be reachable from every node (a shared path or URI)."""

    ray_address: str
    tracking_uri: str
    storage_uri: str
    dashboard_url: str | None = None

    def init_ray(self, verbose: bool = False) -> None:
        """Connect this process to the platform's Ray cluster (idempotent).

        ``verbose`` streams worker logs to this process; otherwise only warnings and errors are shown
        (a failed worker's traceback still arrives with the exception).
        """
        if not ray.is_initialized():
            if _listens_on_loopback_only(self.ray_address):
                # the embedded platform listens on loopback only: Ray must not rewrite its address
                raycompat.keep_loopback_addresses()
            ray.init(address=self.ray_address, logging_level="WARNING", log_to_driver=verbose)
        logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.WARNING)
        # Its only warning says the progress bars are off, which is this method's choice: not news for the user.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False


def _listens_on_loopback_only(address: str) -> bool:
    """True if ``address`` (host:port) is a loopback address whose port this machine listens on, on loopback only:
    a Ray head started by :func:`up`, which keeps all of Ray on loopback."""
    host, _, port = address.rpartition(":")
    if not (host == "localhost" or is_loopback(host.strip("[]"))):
        return False
    bound = {c.laddr.ip for c in psutil.net_connections(kind="inet")
             if c.status == psutil.CONN_LISTEN and str(c.laddr.port) == port}
    return bool(bound) and all(is_loopback(ip) for ip in bound)


def _from_embedded(state: embedded.EmbeddedState) -> Platform:
    return Platform(state.ray_address, state.tracking_uri, state.storage_uri, state.dashboard_url)


def connect(
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    storage_uri: str | None = None,
    state_dir: str | Path = DEFAULT_STATE_DIR,
    *,
    needs_storage: bool = True,
) -> Platform:
    """Resolve the platform: explicit arguments, then ``RAY_ADDRESS`` / ``MLFLOW_TRACKING_URI`` /
    ``RAYLINE_STORAGE``, then the embedded platform in ``state_dir`` (started if it is not running).

    Inside a Ray job (its driver), a missing tracking URI, or missing storage when ``needs_storage``, is refused:
    an embedded platform started there would run on after the job, in the job's temporary directory."""
    ray_address = ray_address or os.environ.get("RAY_ADDRESS")
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    storage_uri = storage_uri or os.environ.get("RAYLINE_STORAGE")
    if os.environ.get(JOB_ENV):
        needed = {"MLFLOW_TRACKING_URI": tracking_uri, **({"RAYLINE_STORAGE": storage_uri} if needs_storage else {})}
        _refuse_in_a_job([name for name, value in needed.items() if not value])
    if ray_address and tracking_uri:
        return Platform(ray_address, tracking_uri, storage_uri or str(Path(state_dir).resolve() / "storage"))
    local = _from_embedded(embedded.up(state_dir))
    return Platform(
        ray_address or local.ray_address,
        tracking_uri or local.tracking_uri,
        storage_uri or local.storage_uri,
        local.dashboard_url if not ray_address else None,
    )


def _refuse_in_a_job(missing: list[str]) -> None:
    if missing:
        raise RaylineError(
            f"this Ray job has no {' and no '.join(missing)} in its environment, and rayline does not start a "
            "tracking server or a cluster inside a job (they would outlive it, and their records vanish with its "
            "working directory): pass MLFLOW_TRACKING_URI and RAYLINE_STORAGE (storage every node reaches) with "
            "`ray job submit --runtime-env-json '{\"env_vars\": {...}}'`, or submit with `rayline submit "
            "--tracking-uri URI --storage URI`, which fills them in")


def up(state_dir: str | Path = DEFAULT_STATE_DIR, num_cpus: int | None = None, *, mlflow_backend: str | None = None,
       mlflow_artifacts: str | None = None, mlflow_auth: bool | None = None) -> Platform:
    """Start (or reuse) the embedded local Ray + MLflow server (MLflow settings: :func:`embedded.up`)."""
    return _from_embedded(embedded.up(state_dir, num_cpus, mlflow_backend=mlflow_backend,
                                      mlflow_artifacts=mlflow_artifacts, mlflow_auth=mlflow_auth))


def down(state_dir: str | Path = DEFAULT_STATE_DIR) -> bool:
    """Stop the embedded platform started from ``state_dir``; False if none was running."""
    return embedded.down(state_dir)


def status(state_dir: str | Path = DEFAULT_STATE_DIR) -> dict[str, object]:
    """What is running from ``state_dir``: addresses and liveness of Ray and MLflow."""
    state = embedded.read_state(state_dir)
    if state is None:
        return {"running": False, "state_dir": str(Path(state_dir).resolve())}
    ray_ok, mlflow_ok = state.ray_alive(), state.mlflow_alive()
    return {
        "running": ray_ok and mlflow_ok,
        "state_dir": state.state_dir,
        "ray_address": state.ray_address,
        "ray": "up" if ray_ok else "down",
        "dashboard_url": state.dashboard_url,
        "tracking_uri": state.tracking_uri,
        "mlflow": "up" if mlflow_ok else "down",
        "mlflow_backend": state.mlflow.backend_store_uri,
        "mlflow_artifacts": state.mlflow.artifacts_destination,
        "mlflow_auth": state.mlflow.auth,
        "storage_uri": state.storage_uri,
        "num_cpus": state.num_cpus,
        "serve_ingress": state.ingress,
    }
