"""Deploying a service spec on the platform's Ray cluster, and the endpoint handle the SDK returns."""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import ray
from ray import serve
from ray.serve import Application
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.config import HTTPOptions

from rayline.cluster import Platform
from rayline.cluster.processes import wait_until
from rayline.errors import RaylineError, SpecError
from rayline.serving.app import ModelServer
from rayline.serving.auth import load_key_digests, load_keys
from rayline.serving.server_config import ServerConfig
from rayline.spec import ServiceSpec, validate

SHUTDOWN_DEADLINE_S = 120.0


@dataclass(frozen=True)
class Endpoint:
    """A deployed service: its base URL and a small HTTP client for it (sending the service's first API key
    when it has keys)."""

    name: str
    url: str
    model_name: str
    api_key: str | None = field(default=None, repr=False)

    def predict(self, rows: pd.DataFrame | list[dict[str, Any]], timeout_s: float = 30.0) -> dict[str, Any]:
        """POST rows to ``/v1/models/<model>/predict`` over HTTP and return the JSON answer."""
        records = rows.to_dict(orient="records") if isinstance(rows, pd.DataFrame) else rows
        request = urllib.request.Request(
            f"{self.url.rstrip('/')}/v1/models/{self.model_name}/predict",
            data=json.dumps({"instances": records}).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())


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
    """Deploy (or update) ``spec`` on the platform's cluster and wait until it is healthy."""
    platform.init_ray()
    keys = load_keys(spec.auth)
    app = build_app(spec, platform.tracking_uri)
    serve.start(http_options={"host": spec.host, "port": spec.port, "request_timeout_s": spec.request_timeout_s})
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    _check_http_options(spec, ray.get(controller.get_http_config.remote()))
    serve.run(app, name=spec.name, route_prefix=spec.route_prefix, blocking=False)
    base = f"http://{spec.host}:{spec.port}{spec.route_prefix.rstrip('/')}"
    return Endpoint(name=spec.name, url=base, model_name=spec.model_name, api_key=keys[0] if keys else None)


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
    applications = serve.status().applications
    return {name: {"status": str(app.status), "route_prefix": app.route_prefix,
                   "deployments": {d: str(info.status) for d, info in app.deployments.items()}}
            for name, app in applications.items()}


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
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return True
    return False
