"""The SDK facade behind ``import rayline``: run, serve, predict, promote, rollback and the platform's lifecycle.

``rayline/__init__.py`` lists the public names (``__all__``) and imports this module on first use."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rayline.cluster import DEFAULT_STATE_DIR, Platform, connect
from rayline.cluster import down as _down
from rayline.cluster import status as _status
from rayline.cluster import up as _up
from rayline.errors import RaylineError as RaylineError
from rayline.errors import SpecError as SpecError
from rayline.inference.batch import BatchPrediction, predict_batch
from rayline.pipeline import PipelineResult, Progress
from rayline.pipeline import run as _run_pipeline
from rayline.pipeline.submit import SubmittedRun
from rayline.pipeline.submit import submit as _submit
from rayline.serving import Endpoint, write_serve_config
from rayline.serving import deploy as _deploy
from rayline.serving import shutdown as _shutdown
from rayline.serving import status as _serve_status
from rayline.spec import (
    ModelUri,
    Overrides,
    PipelineSpec,
    ServiceSpec,
    SweepSpec,
    load_service_spec,
    load_spec,
    load_sweep_spec,
    with_overrides,
)
from rayline.tracking import PromotionDecision as PromotionDecision
from rayline.tracking import move_alias, rollback_alias
from rayline.tune import SweepResult, run_sweep


def run(
    spec: str | Path | PipelineSpec,
    overrides: Overrides = None,
    *,
    platform: Platform | None = None, state_dir: str | Path = DEFAULT_STATE_DIR, progress: Progress | None = None,
    verbose: bool = False,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> PipelineResult:
    """Run a pipeline spec end to end and return its result.

    Where it runs: ``platform`` (from :func:`up`, or :func:`connect` with the addresses of an existing cluster and
    tracking server), else ``RAY_ADDRESS`` / ``MLFLOW_TRACKING_URI`` / ``RAYLINE_STORAGE``, else the embedded local
    platform in ``state_dir``, started or reused; the same for every function here that runs on a cluster.
    ``progress(stage, message)`` receives progress lines; ``verbose`` streams Ray's worker logs. ``run_name`` names
    the run: running again under the same name after a failure resumes its training from the last checkpoint (a
    finished run's name is refused). ``tags`` go on the MLflow run.
    """
    loaded = with_overrides(spec, overrides) if isinstance(spec, PipelineSpec) else load_spec(spec, overrides)
    return _run_pipeline(loaded, platform or connect(state_dir=state_dir), progress, verbose, run_name, tags)


def tune(
    spec: str | Path | SweepSpec,
    overrides: Overrides = None,
    *,
    platform: Platform | None = None, state_dir: str | Path = DEFAULT_STATE_DIR, progress: Progress | None = None,
    resume: bool = False,
) -> SweepResult:
    """Run a sweep spec (``tuning/*.yaml``): Ray Tune over the pipeline it names, one nested MLflow run per
    trial, the best trial's model registered through the promotion gate. ``result.trials`` is a DataFrame with one
    row per trial; ``result.best`` holds the best config, its metrics and the model URI. ``resume`` continues this
    sweep's latest interrupted run without re-running its finished trials."""
    loaded = spec if isinstance(spec, SweepSpec) else load_sweep_spec(spec, overrides)
    return run_sweep(loaded, platform or connect(state_dir=state_dir), progress, resume)


def submit(
    spec: str | Path,
    overrides: Sequence[str] = (),
    *,
    address: str | None = None,
    working_dir: str | Path = ".",
    run_name: str | None = None,
    excludes: Sequence[str] = (),
    command: str = "rayline",
    tracking_uri: str | None = None,
    storage_uri: str | None = None,
    state_dir: str | Path = DEFAULT_STATE_DIR,
    on_log: Callable[[str], None] | None = None,
    on_submitted: Callable[[str], None] | None = None,
) -> SubmittedRun:
    """Submit a pipeline spec as a Ray job (``rayline run`` on the cluster) and follow it to its end: its log goes
    to ``on_log`` as it grows; the result has the job's final status and the MLflow run it finished.

    ``address`` is the cluster's dashboard (``http://head:8265``), else ``RAY_API_SERVER_ADDRESS``, else the
    running embedded platform's. ``working_dir`` (holding the spec) is uploaded without state, caches, virtual
    environments and ``excludes``. Submitting again under the same ``run_name`` resumes from the last checkpoint.
    ``tracking_uri`` and ``storage_uri`` go into the job's environment: a plain Ray cluster (not a ``rayline up``
    platform, which has its own) needs both, or the job is refused. The job's MLflow run (``result.run``) is looked
    up on ``tracking_uri``, or on the embedded platform's server when the job ran there.
    """
    target = address or os.environ.get("RAY_API_SERVER_ADDRESS") or _running_dashboard(state_dir)
    return _submit(spec, list(overrides), target, working_dir=working_dir, run_name=run_name, excludes=excludes,
                   command=command, tracking_uri=tracking_uri, storage_uri=storage_uri,
                   lookup_uri=tracking_uri or _embedded_tracking_uri(target, state_dir), on_log=on_log,
                   on_submitted=on_submitted)


def _embedded_tracking_uri(dashboard_url: str, state_dir: str | Path) -> str | None:
    """The embedded platform's tracking URI, if the cluster at ``dashboard_url`` is that platform's."""
    found = _status(state_dir)
    return str(found["tracking_uri"]) if found["running"] and found["dashboard_url"] == dashboard_url else None


def _running_dashboard(state_dir: str | Path) -> str:
    found = _status(state_dir)
    if not found["running"]:
        raise RaylineError(f"no --address given and no platform is running from {found['state_dir']}: pass the "
                           "cluster's dashboard address (http://head:8265) or start one with `rayline up`")
    return str(found["dashboard_url"])


def serve(
    spec: str | Path | ServiceSpec,
    overrides: Overrides = None,
    *,
    platform: Platform | None = None,
    state_dir: str | Path = DEFAULT_STATE_DIR,
) -> Endpoint:
    """Deploy (or update) a service spec on Ray Serve and return its endpoint (``.url``, ``.predict(rows)``)."""
    loaded = spec if isinstance(spec, ServiceSpec) else load_service_spec(spec, overrides)
    return _deploy(loaded, platform or _serving(state_dir))


def export_service(spec: str | Path | ServiceSpec, overrides: Overrides = None, *,
                   tracking_uri: str | None = None) -> str:
    """A service spec as a Ray Serve config (YAML) for Ray's own ``serve deploy`` and KubeRay's RayService."""
    if isinstance(spec, ServiceSpec):
        return write_serve_config(spec, spec.name, tracking_uri)
    return write_serve_config(load_service_spec(spec, overrides), str(spec), tracking_uri)


def serve_status(*, platform: Platform | None = None, state_dir: str | Path = DEFAULT_STATE_DIR) -> dict[str, object]:
    """Serve's view of the applications on the cluster: status, route prefix and deployments."""
    return _serve_status(platform or _serving(state_dir))


def shutdown(name: str | None = None, *, platform: Platform | None = None,
             state_dir: str | Path = DEFAULT_STATE_DIR) -> None:
    """Delete one served application, or stop Serve entirely (``name=None``)."""
    _shutdown(platform or _serving(state_dir), name)


def predict(model: str | ModelUri, input_uri: str, output_uri: str, *, actors: int = 1,
            platform: Platform | None = None, state_dir: str | Path = DEFAULT_STATE_DIR) -> BatchPrediction:
    """Batch inference: ``model`` (``models:/name@alias`` or ``models:/name/3``) over a CSV/Parquet dataset
    with Ray Data, written as Parquet to ``output_uri``."""
    try:
        uri = ModelUri.parse(model)
    except ValueError as err:
        raise SpecError(str(err), field="--model") from None
    return predict_batch(platform or _serving(state_dir), uri, input_uri, output_uri, actors=actors)


def _serving(state_dir: str | Path) -> Platform:
    """The platform for serving and inference (from the environment, or the embedded one), which need no storage."""
    return connect(state_dir=state_dir, needs_storage=False)


def promote(name: str, version: str | int, alias: str = "champion", *, tracking_uri: str | None = None,
            state_dir: str | Path = DEFAULT_STATE_DIR) -> str | None:
    """Point ``name@alias`` at ``version`` (running endpoints swap to it); return the previous holder."""
    ModelUri(name, alias=alias)  # a malformed name, alias or version is refused before MLflow is reached
    ModelUri.of_version(name, str(version))
    return move_alias(_tracking_uri(tracking_uri, state_dir), name, alias, str(version))


def rollback(name: str, alias: str = "champion", *, tracking_uri: str | None = None,
             state_dir: str | Path = DEFAULT_STATE_DIR) -> str:
    """Move ``name@alias`` back to the version that held it before; return that version."""
    ModelUri(name, alias=alias)  # a malformed name or alias is refused here
    return rollback_alias(_tracking_uri(tracking_uri, state_dir), name, alias)


def _tracking_uri(tracking_uri: str | None, state_dir: str | Path) -> str:
    """The given URI, else ``MLFLOW_TRACKING_URI``, else the embedded platform's server (started if needed)."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        connect(None, None, None, state_dir, needs_storage=False).tracking_uri


def up(state_dir: str | Path = DEFAULT_STATE_DIR, num_cpus: int | None = None, *, mlflow_backend: str | None = None,
       mlflow_artifacts: str | None = None, mlflow_auth: bool | None = None) -> Platform:
    """Start (or reuse) the embedded local platform: Ray head + MLflow server on 127.0.0.1.

    The tracking server's backend store (``mlflow_backend``: a database URI without password, default sqlite in
    ``state_dir``), artifact store (``mlflow_artifacts``: a shared path or object-store URI, default
    ``state_dir/mlartifacts``) and MLflow's basic-auth (``mlflow_auth``, admin from ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD``) default to ``RAYLINE_MLFLOW_BACKEND``, ``RAYLINE_MLFLOW_ARTIFACTS`` and
    ``RAYLINE_MLFLOW_AUTH``; a platform already running keeps its own."""
    return _up(state_dir, num_cpus, mlflow_backend=mlflow_backend, mlflow_artifacts=mlflow_artifacts,
               mlflow_auth=mlflow_auth)


def down(state_dir: str | Path = DEFAULT_STATE_DIR) -> bool:
    """Stop the embedded platform; False if none was running."""
    return _down(state_dir)


def status(state_dir: str | Path = DEFAULT_STATE_DIR) -> dict[str, object]:
    """Addresses and liveness of the embedded platform."""
    return _status(state_dir)
