"""The ``rayline`` command: a typer app over the SDK."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

import rayline
from rayline import DEFAULT_STATE_DIR, RaylineError, SpecError
from rayline.pipeline.summary import run_lines, summary_lines

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Ray Data → Ray Train → MLflow, from one spec.")

StateDir = Annotated[Path, typer.Option("--state-dir", envvar="RAYLINE_STATE_DIR",
                                        help="where the embedded platform keeps its state")]


RunName = Annotated[str | None, typer.Option(help="name the run: a re-run under the same name resumes its training "
                                             "from the last checkpoint")]
TrackingUri = Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="existing MLflow server")]


def _stage(stage: str, message: str) -> None:
    typer.echo(f"[{stage}] {message}", err=False)


def _fail(err: Exception, code: int) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


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
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override a field: a.b=value")] = None,
    ray_address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="existing Ray cluster")] = None,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI",
                                                     help="existing MLflow server")] = None,
    storage: Annotated[str | None, typer.Option(envvar="RAYLINE_STORAGE",
                                                help="checkpoint/data storage URI shared by all nodes")] = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="stream Ray's worker logs")] = False,
    run_name: RunName = None,
) -> None:
    """Run a pipeline: data → train → evaluate → register."""
    if not ray_address:
        _exit_if_the_platform_stops(state_dir)
    try:
        loaded = rayline.load_spec(spec, overrides or [])
        _stage("spec", f"{spec}: pipeline {loaded.name!r}, model {loaded.model.name}")
        result = rayline.run(loaded, ray_address=ray_address, tracking_uri=tracking_uri, storage_uri=storage,
                             state_dir=state_dir, progress=_stage, verbose=verbose, run_name=run_name)
    except SpecError as err:
        raise _fail(err, 2) from None
    except RaylineError as err:
        raise _fail(err, 1) from None
    typer.echo("")
    headline, *lines = summary_lines(loaded.name, result)
    typer.secho(headline, bold=True)
    for line in lines:
        typer.echo(line)


@app.command("tune")
def tune_command(
    spec: Annotated[Path, typer.Argument(help="sweep spec (YAML)")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override a field: a.b=value")] = None,
    ray_address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="existing Ray cluster")] = None,
    tracking_uri: TrackingUri = None,
    storage: Annotated[str | None, typer.Option(envvar="RAYLINE_STORAGE",
                                                help="checkpoint/data storage URI shared by all nodes")] = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
    resume: Annotated[bool, typer.Option("--resume", help="continue this sweep's latest interrupted run")] = False,
) -> None:
    """Run a sweep: Ray Tune trials of a pipeline, nested MLflow runs, the best model registered."""
    try:
        result = rayline.tune(spec, overrides or [], ray_address=ray_address, tracking_uri=tracking_uri,
                              storage_uri=storage, state_dir=state_dir, progress=_stage, resume=resume)
    except SpecError as err:
        raise _fail(err, 2) from None
    except RaylineError as err:
        raise _fail(err, 1) from None
    shown = [c for c in result.trials.columns if c.startswith("config/") or c in ("training_iteration", "trial_id")]
    typer.echo("")
    typer.echo(result.trials[shown].to_string(index=False))
    best = result.best
    typer.secho(f"\nsweep finished in {result.wall_s:.1f} s; best {best.config}", bold=True)
    typer.echo(f"  model          {best.model_uri}")
    typer.echo(f"  promotion      {'PROMOTED' if best.promotion.promoted else 'kept'}: {best.promotion.reason}")
    for name, why in result.skipped.items():
        typer.echo(f"  skipped        {name} (ranked higher): {why}")


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
    try:
        platform = rayline.up(state_dir, num_cpus, mlflow_backend=mlflow_backend, mlflow_artifacts=mlflow_artifacts,
                              mlflow_auth=mlflow_auth)
    except RaylineError as err:
        raise _fail(err, 2) from None
    typer.echo(f"ray        {platform.ray_address}  (dashboard {platform.dashboard_url})")
    typer.echo(f"mlflow     {platform.tracking_uri}")
    typer.echo(f"storage    {platform.storage_uri}")


@app.command()
def status(state_dir: StateDir = Path(DEFAULT_STATE_DIR)) -> None:
    """Show the embedded platform's addresses and health (exit 1 if it is not running)."""
    try:
        info = rayline.status(state_dir)
    except RaylineError as err:
        raise _fail(err, 2) from None
    typer.echo(json.dumps(info, indent=2))
    if not info["running"]:
        raise typer.Exit(1)


@app.command()
def down(state_dir: StateDir = Path(DEFAULT_STATE_DIR)) -> None:
    """Stop the embedded platform started from the state directory."""
    try:
        stopped = rayline.down(state_dir)
    except RaylineError as err:
        raise _fail(err, 2) from None
    typer.echo("stopped" if stopped else "nothing was running")


@app.command("serve")
def serve_command(
    target: Annotated[str, typer.Argument(help="a service spec (YAML), or `status` / `shutdown`")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override a field: a.b=value")] = None,
    name: Annotated[str | None, typer.Option(help="with shutdown: only this application")] = None,
    export: Annotated[Path | None, typer.Option(help="write the spec as a Ray Serve config (for `serve deploy`) "
                                                     "instead of deploying it")] = None,
    ray_address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="existing Ray cluster")] = None,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI",
                                                     help="existing MLflow server")] = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Deploy or update a model endpoint on Ray Serve (`rayline serve serving/digits.yaml`), export it as a
    Ray Serve config (`--export`), or show (`status`) or stop (`shutdown`) what is served."""
    try:
        if export is not None:
            export.write_text(rayline.export_service(target, overrides or [], tracking_uri=tracking_uri))
            typer.echo(f"wrote {export}: RAY_AUTH_MODE=token serve deploy {export} --address <dashboard URL>")
            return
        where = {"ray_address": ray_address, "tracking_uri": tracking_uri, "state_dir": state_dir}
        if target == "status":
            typer.echo(json.dumps(rayline.serve_status(**where), indent=2))
            return
        if target == "shutdown":
            rayline.shutdown(name, **where)
            typer.echo(f"stopped {name or 'every application'}")
            return
        spec = rayline.load_service_spec(target, overrides or [])
        _stage("serve", f"deploying {spec.model} as {spec.name!r}")
        endpoint = rayline.serve(spec, **where)
    except RaylineError as err:
        raise _fail(err, 2 if isinstance(err, SpecError) else 1) from None
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
    ray_address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="existing Ray cluster")] = None,
    tracking_uri: TrackingUri = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Batch inference: the packaged model over a dataset with Ray Data, written as Parquet."""
    try:
        done = rayline.predict(model, input_uri, output_uri, actors=actors, ray_address=ray_address,
                               tracking_uri=tracking_uri, state_dir=state_dir)
    except RaylineError as err:
        raise _fail(err, 2 if isinstance(err, SpecError) else 1) from None
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
    try:
        previous = rayline.promote(name, version, alias, tracking_uri=tracking_uri, state_dir=state_dir)
    except Exception as err:  # MLflow says which version or model is missing
        raise _fail(err, 1) from None
    typer.echo(f"{name}@{alias}: version {previous or '-'} -> {version}")


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="registered model name")],
    alias: Annotated[str, typer.Option(help="the alias to move back")] = "champion",
    tracking_uri: TrackingUri = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Move an alias back to the version that held it before."""
    try:
        version = rayline.rollback(name, alias, tracking_uri=tracking_uri, state_dir=state_dir)
    except Exception as err:
        raise _fail(err, 1) from None
    typer.echo(f"{name}@{alias} -> version {version}")


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="pipeline spec (YAML), inside the working directory")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override a field: a.b=value")] = None,
    address: Annotated[str | None, typer.Option(envvar="RAY_API_SERVER_ADDRESS",
                                                help="the cluster's dashboard, http://head:8265 (default: the "
                                                     "running embedded platform's)")] = None,
    working_dir: Annotated[Path, typer.Option(help="uploaded as the job's working directory")] = Path("."),
    run_name: RunName = None,
    exclude: Annotated[list[str] | None, typer.Option(help="leave matching files out of the upload (gitignore "
                                                           "syntax)")] = None,
    command: Annotated[str, typer.Option(help="how the cluster's nodes run rayline")] = "rayline",
    tracking_uri: Annotated[str | None, typer.Option(
        envvar="MLFLOW_TRACKING_URI", help="the MLflow server the job records into, put in its environment (a "
        "plain Ray cluster has none; a `rayline up` platform's is used when not given)")] = None,
    storage: Annotated[str | None, typer.Option(
        envvar="RAYLINE_STORAGE", help="checkpoint/data storage URI every node reaches, put in the job's "
        "environment (as --tracking-uri)")] = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Run a pipeline on a Ray cluster as a Ray job: upload, stream its log, end with its status and MLflow run."""
    try:
        job = rayline.submit(spec, overrides or [], address=address, working_dir=working_dir, run_name=run_name,
                             excludes=exclude or [], command=command, tracking_uri=tracking_uri,
                             storage_uri=storage, state_dir=state_dir,
                             on_submitted=lambda job_id: _stage("job", f"submitted {job_id}"),
                             on_log=lambda text: typer.echo(text, nl=False))
    except SpecError as err:
        raise _fail(err, 2) from None
    except RaylineError as err:
        raise _fail(err, 1) from None
    typer.echo("")
    typer.secho(f"job {job.job_id} {job.status}" + (f": {job.message}" if not job.succeeded else ""), bold=True)
    if job.run is not None:
        typer.echo("\n".join(run_lines(job.run)))
    if not job.succeeded:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()
