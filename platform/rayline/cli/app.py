"""The ``rayline`` command: a typer app over the public SDK (``import rayline``) and nothing else."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

import rayline
from rayline import DEFAULT_STATE_DIR, RaylineError, SpecError
from rayline.cli.summary import job_summary, run_summary, sweep_summary

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Ray Data → Ray Train → MLflow, from one spec.")

# The options several commands share, defined once.
StateDir = Annotated[Path, typer.Option("--state-dir", envvar="RAYLINE_STATE_DIR",
                                        help="where the embedded platform keeps its state")]
RayAddress = Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="existing Ray cluster")]
TrackingUri = Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="existing MLflow server")]
Storage = Annotated[str | None, typer.Option(envvar="RAYLINE_STORAGE",
                                             help="checkpoint/data storage URI shared by all nodes")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="override a field: a.b=value")]
RunName = Annotated[str | None, typer.Option(help="name the run: a re-run under the same name resumes its training "
                                             "from the last checkpoint")]
JobTrackingUri = Annotated[str | None, typer.Option(
    envvar="MLFLOW_TRACKING_URI", help="the MLflow server the job records into, put in its environment (a plain Ray "
    "cluster has none; a `rayline up` platform's is used when not given)")]
JobStorage = Annotated[str | None, typer.Option(
    envvar="RAYLINE_STORAGE", help="checkpoint/data storage URI every node reaches, put in the job's environment (as "
    "--tracking-uri)")]


def _stage(stage: str, message: str) -> None:
    typer.echo(f"[{stage}] {message}", err=False)


def _echo(lines: list[str]) -> None:
    headline, *rest = lines
    typer.secho(headline, bold=True)
    for line in rest:
        typer.echo(line)


@contextmanager
def _exit_codes(rayline_error: int = 1, others: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Every command's errors as one red line and an exit code, never a traceback: 2 for a bad spec or option
    (:class:`SpecError`), ``rayline_error`` for the other errors a user can fix, 1 for ``others``."""
    try:
        yield
    except SpecError as err:
        raise _fail(err, 2) from None
    except RaylineError as err:
        raise _fail(err, rayline_error) from None
    except others as err:
        raise _fail(err, 1) from None


def _fail(err: Exception, code: int) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _tags(pairs: list[str] | None) -> dict[str, str]:
    tags = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"{pair!r} is not of the form key=value", field="--tag")
        tags[key] = value
    return tags


def _exit_if_the_platform_stops(state_dir: Path, poll_s: float = 1.0) -> None:
    """Watch the embedded platform from a daemon thread. Once it has been seen running, its stop (`rayline down`, a
    crash) ends this command with one line and exit code 1, instead of Ray's client aborting the process a minute
    later with a report of its own."""

    def watch() -> None:
        seen_running = False
        while True:
            time.sleep(poll_s)
            try:
                running = bool(rayline.status(state_dir)["running"])
            except RaylineError:  # platform.json half-written or removed
                running = False
            if running:
                seen_running = True
            elif seen_running:
                typer.secho("error: the platform stopped while the pipeline ran (`rayline down`, or a crash): the "
                            "run did not finish and nothing more was logged or registered", fg=typer.colors.RED,
                            err=True)
                os._exit(1)

    threading.Thread(target=watch, name="rayline-platform-watch", daemon=True).start()


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="pipeline spec (YAML)")],
    overrides: Overrides = None,
    ray_address: RayAddress = None, tracking_uri: TrackingUri = None, storage: Storage = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="stream Ray's worker logs")] = False,
    run_name: RunName = None,
    tag: Annotated[list[str] | None, typer.Option(help="a tag for the MLflow run: key=value")] = None,
) -> None:
    """Run a pipeline: data → train → evaluate → register."""
    if not ray_address:
        _exit_if_the_platform_stops(state_dir)
    with _exit_codes():
        loaded = rayline.load_spec(spec, overrides or [])
        _stage("spec", f"{spec}: pipeline {loaded.name!r}, model {loaded.model.name}")
        tags = _tags(tag)
        result = rayline.run(loaded, platform=rayline.connect(ray_address, tracking_uri, storage, state_dir),
                             progress=_stage, verbose=verbose, run_name=run_name, tags=tags)
    typer.echo("")
    _echo(run_summary(loaded.name, result))


@app.command("tune")
def tune_command(
    spec: Annotated[Path, typer.Argument(help="sweep spec (YAML)")],
    overrides: Overrides = None,
    ray_address: RayAddress = None, tracking_uri: TrackingUri = None, storage: Storage = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
    resume: Annotated[bool, typer.Option("--resume", help="continue this sweep's latest interrupted run")] = False,
) -> None:
    """Run a sweep: Ray Tune trials of a pipeline, nested MLflow runs, the best model registered."""
    with _exit_codes():
        loaded = rayline.load_sweep_spec(spec, overrides or [])
        result = rayline.tune(loaded, platform=rayline.connect(ray_address, tracking_uri, storage, state_dir),
                              progress=_stage, resume=resume)
    shown = [c for c in result.trials.columns if c.startswith("config/") or c in ("training_iteration", "trial_id")]
    typer.echo("")
    typer.echo(result.trials[shown].to_string(index=False))
    typer.echo("")
    _echo(sweep_summary(result))


@app.command()
def up(
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
    num_cpus: Annotated[int | None, typer.Option(help="logical CPUs Ray offers (default: max(4, cores))")] = None,
    mlflow_backend: Annotated[str | None, typer.Option(
        envvar="RAYLINE_MLFLOW_BACKEND", help="MLflow backend store: a database URI without password, e.g. "
        "postgresql+psycopg2://user@host/db (password in PGPASSWORD) (default: sqlite in the state directory)")] = None,
    mlflow_artifacts: Annotated[str | None, typer.Option(
        envvar="RAYLINE_MLFLOW_ARTIFACTS", help="MLflow artifact store: a shared path or an object-store URI "
        "(s3://...) (default: mlartifacts/ in the state directory)")] = None,
    mlflow_auth: Annotated[bool | None, typer.Option(
        "--mlflow-auth/--no-mlflow-auth", envvar="RAYLINE_MLFLOW_AUTH", help="run MLflow's basic-auth app, its "
        "admin from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")] = None,
) -> None:
    """Start (or reuse) the embedded local platform: Ray + MLflow on 127.0.0.1."""
    with _exit_codes(rayline_error=2):
        platform = rayline.up(state_dir, num_cpus, mlflow_backend=mlflow_backend, mlflow_artifacts=mlflow_artifacts,
                              mlflow_auth=mlflow_auth)
    typer.echo(f"ray        {platform.ray_address}  (dashboard {platform.dashboard_url})")
    typer.echo(f"mlflow     {platform.tracking_uri}")
    typer.echo(f"storage    {platform.storage_uri}")


@app.command()
def status(state_dir: StateDir = Path(DEFAULT_STATE_DIR)) -> None:
    """Show the embedded platform's addresses and health (exit 1 if it is not running)."""
    with _exit_codes(rayline_error=2):
        info = rayline.status(state_dir)
    typer.echo(json.dumps(info, indent=2))
    if not info["running"]:
        raise typer.Exit(1)


@app.command()
def down(state_dir: StateDir = Path(DEFAULT_STATE_DIR)) -> None:
    """Stop the embedded platform started from the state directory."""
    with _exit_codes(rayline_error=2):
        stopped = rayline.down(state_dir)
    typer.echo("stopped" if stopped else "nothing was running")


@app.command("serve")
def serve_command(
    target: Annotated[str, typer.Argument(help="a service spec (YAML), or `status` / `shutdown`")],
    overrides: Overrides = None,
    name: Annotated[str | None, typer.Option(help="with shutdown: only this application")] = None,
    export: Annotated[Path | None, typer.Option(help="write the spec as a Ray Serve config (for `serve deploy`) "
                                                     "instead of deploying it")] = None,
    ray_address: RayAddress = None,
    tracking_uri: TrackingUri = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Deploy or update a model endpoint on Ray Serve (`rayline serve serving/digits.yaml`), export it as a
    Ray Serve config (`--export`), or show (`status`) or stop (`shutdown`) what is served."""
    def platform() -> rayline.Platform:
        return rayline.connect(ray_address, tracking_uri, None, state_dir, needs_storage=False)

    with _exit_codes():
        if export is not None:
            export.write_text(rayline.export_service(target, overrides or [], tracking_uri=tracking_uri))
            typer.echo(f"wrote {export}: RAY_AUTH_MODE=token serve deploy {export} --address <dashboard URL>")
            return
        if target == "status":
            typer.echo(json.dumps(rayline.serve_status(platform=platform()), indent=2))
            return
        if target == "shutdown":
            rayline.shutdown(name, platform=platform())
            typer.echo(f"stopped {name or 'every application'}")
            return
        spec = rayline.load_service_spec(target, overrides or [])
        _stage("serve", f"deploying {spec.model} as {spec.name!r}")
        endpoint = rayline.serve(spec, platform=platform())
    typer.echo(f"serving {spec.model} at {endpoint.url}")
    typer.echo(f"  predict   POST {endpoint.url}/v1/models/{spec.model_name}/predict")
    typer.echo(f"  MLflow    POST {endpoint.url}/invocations")
    typer.echo(f"  OIP v2    POST {endpoint.url}/v2/models/{spec.model_name}/infer")
    typer.echo(f"  docs      {endpoint.url}/docs")


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="models:/name@alias or models:/name/version")],
    input_uri: Annotated[str, typer.Option("--input", help="CSV or Parquet file, directory or URI")],
    output_uri: Annotated[str, typer.Option("--output", help="Parquet output directory or URI")],
    actors: Annotated[int, typer.Option(help="model replicas (Ray Data actors)")] = 1,
    ray_address: RayAddress = None,
    tracking_uri: TrackingUri = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Batch inference: the packaged model over a dataset with Ray Data, written as Parquet."""
    with _exit_codes():
        try:  # refused before any platform starts
            uri = rayline.ModelUri.parse(model)
        except SpecError as err:
            err.field = "--model"
            raise
        done = rayline.predict(uri, input_uri, output_uri, actors=actors, platform=rayline.connect(
            ray_address, tracking_uri, None, state_dir, needs_storage=False))
    typer.echo(f"{done.rows} predictions by {done.model_name} version {done.model_version} -> {done.output}")


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[int, typer.Option(help="the version to point the alias at")],
    alias: Annotated[str, typer.Option(help="the alias to move")] = "champion",
    tracking_uri: TrackingUri = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Move an alias to a version; endpoints serving that alias swap to it without dropping requests."""
    with _exit_codes(others=(Exception,)):  # MLflow's errors say which version or model is missing
        previous = rayline.promote(name, version, alias, tracking_uri=tracking_uri, state_dir=state_dir)
    typer.echo(f"{name}@{alias}: version {previous or '-'} -> {version}")


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="registered model name")],
    alias: Annotated[str, typer.Option(help="the alias to move back")] = "champion",
    tracking_uri: TrackingUri = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Move an alias back to the version that held it before."""
    with _exit_codes(others=(Exception,)):
        version = rayline.rollback(name, alias, tracking_uri=tracking_uri, state_dir=state_dir)
    typer.echo(f"{name}@{alias} -> version {version}")


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="pipeline spec (YAML), inside the working directory")],
    overrides: Overrides = None,
    address: Annotated[str | None, typer.Option(envvar="RAY_API_SERVER_ADDRESS",
                                                help="the cluster's dashboard, http://head:8265 (default: the "
                                                     "running embedded platform's)")] = None,
    working_dir: Annotated[Path, typer.Option(help="uploaded as the job's working directory")] = Path("."),
    run_name: RunName = None,
    exclude: Annotated[list[str] | None, typer.Option(help="leave matching files out of the upload (gitignore "
                                                           "syntax)")] = None,
    command: Annotated[str, typer.Option(help="how the cluster's nodes run rayline")] = "rayline",
    tracking_uri: JobTrackingUri = None,
    storage: JobStorage = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Run a pipeline on a Ray cluster as a Ray job: upload, stream its log, end with its status and MLflow run."""
    with _exit_codes():
        job = rayline.submit(spec, overrides or [], address=address, working_dir=working_dir, run_name=run_name,
                             excludes=exclude or [], command=command, tracking_uri=tracking_uri,
                             storage_uri=storage, state_dir=state_dir,
                             on_submitted=lambda job_id: _stage("job", f"submitted {job_id}"),
                             on_log=lambda text: typer.echo(text, nl=False))
    typer.echo("")
    _echo(job_summary(job))
    if not job.succeeded:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()
