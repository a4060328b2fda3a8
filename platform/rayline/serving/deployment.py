"""Deploying a service spec on the platform's Ray cluster, and the endpoint handle the SDK returns."""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import ray
from ray import serve
from ray.serve import Application, RunTarget
from ray.serve.config import HTTPOptions
from ray.serve.schema import ApplicationDetails, ApplicationStatus, ServeInstanceDetails

from rayline import raycompat
from rayline.cluster import Platform
from rayline.cluster.processes import wait_until
from rayline.errors import RaylineError, SpecError
from rayline.serving.app import ModelServer
from rayline.serving.auth import load_key_digests, load_keys
from rayline.serving.server_config import ServerConfig
from rayline.spec import ServiceSpec, validate

SHUTDOWN_DEADLINE_S = 120.0
RETRY_S = 15.0
RETRY_FIRST_DELAY_S = 0.05
RETRY_MAX_DELAY_S = 1.0
RETRIED_STATUSES = frozenset({500, 502, 503, 504})
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Endpoint:
    """A deployed service: its base URL and a small HTTP client for it (sending the service's first API key
    when it has keys)."""

    name: str
    url: str
    model_name: str
    api_key: str | None = field(default=None, repr=False)

    def predict(self, rows: pd.DataFrame | list[dict[str, Any]], timeout_s: float = 30.0,
                retry_s: float = RETRY_S) -> dict[str, Any]:
        """POST rows to ``/v1/models/<model>/predict`` over HTTP and return the JSON answer.

        A prediction is idempotent, so a request that found no live replica (the connection failed or dropped,
        also mid-answer, or the ingress answered 500, 502, 503 or 504: a replica died or is being replaced, or all
        are busy) is sent again, with backoff, for up to ``retry_s`` seconds (0: never); the last error is raised."""
        records = rows.to_dict(orient="records") if isinstance(rows, pd.DataFrame) else rows
        request = urllib.request.Request(
            f"{self.url.rstrip('/')}/v1/models/{self.model_name}/predict",
            data=json.dumps({"instances": records}).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})},
        )
        deadline, delay = time.monotonic() + retry_s, RETRY_FIRST_DELAY_S
        while True:
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    return json.loads(response.read())
            # HTTPError is a URLError; IncompleteRead (an answer cut off by a dying replica) is an HTTPException
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as err:
                if (isinstance(err, urllib.error.HTTPError) and err.code not in RETRIED_STATUSES) \
                        or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_DELAY_S)


def build_app(spec: ServiceSpec, tracking_uri: str) -> Application:
    """The Serve application for ``spec`` (also what ``serve build``/``serve deploy`` configs point at)."""
    return ModelServer.options(
        name=spec.name,
        autoscaling_config=spec.autoscaling.model_dump(exclude_none=True),
        max_ongoing_requests=spec.max_ongoing_requests,
        max_queued_requests=spec.max_queued_requests,
        ray_actor_options={"num_cpus": spec.resources.num_cpus, "num_gpus": spec.resources.num_gpus},
    ).bind(ServerConfig.from_spec(spec, tracking_uri, load_key_digests(spec.auth)))


def app_builder(args: dict[str, Any]) -> Application:
    """The application builder Ray's own CLI calls (``import_path: rayline.serving:app_builder`` in a Serve
    config, ``args`` = the service spec's fields). The model registry is ``MLFLOW_TRACKING_URI`` in the
    cluster's environment (``rayline up`` sets it) or in the config's ``runtime_env.env_vars``."""
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise RaylineError("MLFLOW_TRACKING_URI is not set on the cluster: start it with `rayline up`, or set it "
                           "in the Serve config's runtime_env.env_vars")
    return build_app(validate(ServiceSpec, args, file="Serve config args"), tracking_uri)


def deploy(spec: ServiceSpec, platform: Platform) -> Endpoint:
    """Deploy (or update) ``spec`` on the platform's cluster and wait until it runs (see :func:`_wait_running`)."""
    platform.init_ray()
    keys = load_keys(spec.auth)
    app = build_app(spec, platform.tracking_uri)
    serve.start(http_options={"host": spec.host, "port": spec.port, "request_timeout_s": spec.request_timeout_s})
    controller = raycompat.serve_controller()
    _check_http_options(spec, ray.get(controller.get_http_config.remote()))
    serve.run_many([RunTarget(app, name=spec.name, route_prefix=spec.route_prefix)],
                   wait_for_applications_running=False)
    _wait_running(spec)
    _wait_routed(spec)
    base = f"http://{spec.host}:{spec.port}{spec.route_prefix.rstrip('/')}"
    return Endpoint(name=spec.name, url=base, model_name=spec.model_name, api_key=keys[0] if keys else None)


def _wait_running(spec: ServiceSpec) -> None:
    """Wait until Serve runs ``spec``'s application. When Serve gives up on its replicas (each failed to start
    a few times: ``DEPLOY_FAILED``) or ``deploy_timeout_s`` passes, raise a RaylineError with Serve's reason
    (for a model that cannot be loaded, the version and the cause); the application stays, reported by
    ``rayline serve status``, until it is redeployed or shut down."""
    seen: list[ApplicationDetails] = []

    def settled() -> bool:
        seen[:] = [_applications()[spec.name]]
        return seen[0].status in (ApplicationStatus.RUNNING, ApplicationStatus.DEPLOY_FAILED)

    try:
        wait_until(settled, spec.deploy_timeout_s, f"Serve application {spec.name!r}")
    except TimeoutError:
        raise RaylineError(f"service {spec.name!r} is not running after deploy_timeout_s={spec.deploy_timeout_s:g} "
                           f"s ({seen[0].status.value}): {_reason(seen[0])}") from None
    if seen[0].status == ApplicationStatus.DEPLOY_FAILED:
        raise RaylineError(f"service {spec.name!r} failed to deploy: {_reason(seen[0])}. "
                           f"`rayline serve status` shows it; `rayline serve shutdown --name {spec.name}` removes it")


def _wait_routed(spec: ServiceSpec) -> None:
    """Wait until Serve's HTTP proxy routes ``spec.route_prefix``: the application can be RUNNING before the
    proxy (HAProxy reloads its config) has the route, and a request sent then gets a 404."""
    host = LOOPBACK if spec.host in ("0.0.0.0", "::") else spec.host
    routes_url = f"http://{host}:{spec.port}/-/routes"

    def routed() -> bool:
        try:
            with urllib.request.urlopen(routes_url, timeout=5) as response:
                return spec.route_prefix in json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, ValueError):  # proxy starting or reloading
            return False

    try:
        wait_until(routed, spec.deploy_timeout_s, f"a route for {spec.route_prefix}")
    except TimeoutError:
        raise RaylineError(f"service {spec.name!r} runs, but Serve's proxy at {routes_url} does not route "
                           f"{spec.route_prefix} after deploy_timeout_s={spec.deploy_timeout_s:g} s") from None


def _applications() -> dict[str, ApplicationDetails]:
    """Serve's applications with their status, reason and route prefix (none while Serve is not running)."""
    try:
        controller = raycompat.serve_controller()
    except ValueError:
        return {}
    return ServeInstanceDetails(**ray.get(controller.get_serve_instance_details.remote())).applications


def _reason(app: ApplicationDetails) -> str:
    """Why ``app`` is not running, from its and its deployments' status messages: the last exception line of a
    replica's traceback when there is one (``pkg.ModelLoadError: models:/m/4 cannot be loaded: ...``, without
    the class path), else the messages."""
    messages = [app.message, *(deployment.message for deployment in app.deployments.values())]
    lines = [line.strip() for message in messages for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    if errors:
        return errors[-1].split(": ", 1)[1]
    return " ".join(lines) or "no reason given"


def _check_http_options(spec: ServiceSpec, running: HTTPOptions) -> None:
    """Every application on a cluster shares Serve's one HTTP server, whose options the first deploy set:
    a spec asking for others is refused, naming the field, before anything is deployed."""
    for name in ("host", "port", "request_timeout_s"):
        wanted, actual = getattr(spec, name), getattr(running, name)
        if wanted != actual:
            raise SpecError(f"Serve on this cluster already runs with {name}={actual!r}, shared by every "
                            f"application; set {name}: {actual!r}, or stop Serve first (`rayline serve shutdown`)",
                            field=name)


def status(platform: Platform) -> dict[str, Any]:
    """Serve's view of the applications on the cluster."""
    platform.init_ray()
    return {name: {"status": app.status.value, "route_prefix": app.route_prefix,
                   "deployments": {d: info.status.value for d, info in app.deployments.items()},
                   **({"reason": _reason(app)} if app.status != ApplicationStatus.RUNNING else {})}
            for name, app in _applications().items()}


def shutdown(platform: Platform, name: str | None = None) -> None:
    """Delete one application, or stop Serve entirely and wait until its controller has exited (so that a
    following deploy starts a new Serve instead of joining the one being torn down)."""
    platform.init_ray()
    if name:
        serve.delete(name)
        return
    serve.shutdown()
    wait_until(_controller_gone, SHUTDOWN_DEADLINE_S, "Serve's controller to exit")


def _controller_gone() -> bool:
    try:
        raycompat.serve_controller()
    except ValueError:
        return True
    return False
