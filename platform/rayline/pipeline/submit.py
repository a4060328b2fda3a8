"""A pipeline run as a Ray job on a cluster: ``rayline run`` as the job's entrypoint, its MLflow run found afterwards
by the tag that carries the job's submission id."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rayline import tracking
from rayline.cluster import jobs
from rayline.errors import RaylineError
from rayline.pipeline.runner import check_run_name
from rayline.spec import load_spec


@dataclass(frozen=True)
class SubmittedRun:
    """A pipeline submitted as a Ray job, once the job has ended: the job's id, final status and message, its
    log, and the MLflow run it made (None when it made none, or when no tracking URI was known to look it up)."""

    job_id: str
    status: str
    message: str
    logs: str
    run: tracking.TrackedRun | None

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def entrypoint(spec_path: str, overrides: Sequence[str], run_name: str | None, command: str,
               tags: Mapping[str, str] | None = None) -> str:
    """The job's shell command: ``rayline run`` of the spec (a path inside the working directory)."""
    args = [*shlex.split(command), "run", spec_path, *(a for o in overrides for a in ("--set", o))]
    args += [a for key, value in (tags or {}).items() for a in ("--tag", f"{key}={value}")]
    return shlex.join([*args, *(["--run-name", run_name] if run_name else [])])


def submit(spec: str | Path, overrides: Sequence[str], address: str, *, working_dir: str | Path = ".",
           run_name: str | None = None, excludes: Sequence[str] = (), command: str = "rayline",
           tracking_uri: str | None = None, storage_uri: str | None = None, lookup_uri: str | None = None,
           on_log: Callable[[str], None] | None = None,
           on_submitted: Callable[[str], None] | None = None) -> SubmittedRun:
    """Submit ``rayline run SPEC`` to the Ray cluster whose dashboard is at ``address`` and follow it to its end.

    The spec is validated here first (an invalid one raises :class:`SpecError` and nothing is submitted); it must
    lie inside ``working_dir``, which is uploaded without :data:`rayline.cluster.jobs.EXCLUDES` and ``excludes``.
    The job's driver finds MLflow and storage in its environment: ``tracking_uri`` and ``storage_uri`` when given
    (a plain Ray cluster has neither), else the cluster's own (a ``rayline up`` platform's). ``command`` is how the
    cluster's nodes call rayline. A ``run_name`` makes a re-submission resume from the last checkpoint of the
    earlier attempt. The job's MLflow run is looked up afterwards on ``lookup_uri`` (default ``tracking_uri``), by
    the tag :data:`rayline.tracking.SUBMISSION_TAG` the job's run carries."""
    root, path = Path(working_dir).resolve(), Path(spec).resolve()
    if not path.is_relative_to(root):
        raise RaylineError(f"--working-dir {root}: the spec {spec} lies outside it, so the job could not read it")
    if run_name is not None:
        check_run_name(run_name)
    if tracking_uri and urlsplit(tracking_uri).password:
        raise RaylineError("--tracking-uri holds a password: Ray logs a job's environment in clear; give the cluster "
                           "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead")
    env_vars = {name: value for name, value in (("MLFLOW_TRACKING_URI", tracking_uri),
                                                 ("RAYLINE_STORAGE", storage_uri)) if value}
    loaded = load_spec(path, list(overrides))
    job_id = f"rayline-{loaded.name}-{run_name or 'run'}-{secrets.token_hex(4)}"
    outcome = jobs.submit_and_follow(
        address, entrypoint(path.relative_to(root).as_posix(), overrides, run_name, command,
                            {tracking.SUBMISSION_TAG: job_id}), root,
        excludes=excludes, env_vars=env_vars,
        metadata={"rayline.pipeline": loaded.name, "rayline.run_name": run_name or ""}, submission_id=job_id,
        on_log=on_log, on_submitted=on_submitted)
    lookup_uri = lookup_uri or tracking_uri
    run = tracking.find_tagged_run(lookup_uri, loaded.tracking.experiment, tracking.SUBMISSION_TAG, job_id) \
        if lookup_uri else None
    return SubmittedRun(outcome.job_id, outcome.status, outcome.message, outcome.logs, run)
