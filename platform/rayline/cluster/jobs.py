"""Ray jobs through Ray's own JobSubmissionClient: the working directory packed without what a job never needs,
checked against Ray's upload limit before anything is sent, the job's log streamed, its final status returned."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ray.dashboard.modules.job.common import JobStatus
from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from rayline import raycompat
from rayline.errors import RaylineError

# Besides Ray's own (.git, .venv, venv, __pycache__) and what .gitignore lists: an embedded platform's state,
# local MLflow stores, caches and build output. Data a job reads belongs in shared storage, not in its upload.
EXCLUDES = (".rayline", ".venv*", "mlruns", "mlartifacts", "mlflow.db", ".pytest_cache", ".ruff_cache", "*.pyc",
            "*.egg-info", "build", "bench/.state", "bench/.venv-peers")
POLL_S = 0.5
_MIB = 1024 * 1024


@dataclass(frozen=True)
class JobOutcome:
    """A finished Ray job: its id, final status (``SUCCEEDED``, ``FAILED``, ``STOPPED``), Ray's message, its log."""

    job_id: str
    status: str
    message: str
    logs: str

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.SUCCEEDED.value


def client(address: str) -> JobSubmissionClient:
    """A client of the Ray cluster whose dashboard is at ``address`` (``http://host:8265``), with Ray's token
    authentication; an unreachable address or a refused token is a one-line :class:`RaylineError`."""
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise RaylineError(f"{address}: the cluster refused this client's token ({err}). Set RAY_AUTH_TOKEN or "
                           "~/.ray/auth_token to the cluster's token") from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise RaylineError(f"{address}: no Ray cluster answers there ({err})") from None


def pack(working_dir: Path, into: Path, excludes: Sequence[str] = ()) -> Path:
    """Zip ``working_dir`` as Ray would (its .gitignore and default excludes respected) without :data:`EXCLUDES`
    and ``excludes``; refuse it, naming its size and Ray's limit, if Ray could not take it."""
    if not working_dir.is_dir():
        raise RaylineError(f"--working-dir {working_dir}: not a directory")
    package = into / "working_dir.zip"
    raycompat.pack_working_dir(working_dir, package, [*EXCLUDES, *excludes])
    size, limit = package.stat().st_size, raycompat.upload_limit_bytes()
    if size >= limit:
        raise RaylineError(f"--working-dir {working_dir}: packs to {size / _MIB:.1f} MiB, over Ray's upload limit of "
                           f"{limit / _MIB:.0f} MiB; leave large files out (--exclude, .gitignore) "
                           "and put data in shared storage")
    return package


def submit_and_follow(address: str, entrypoint: str, working_dir: Path, *, excludes: Sequence[str] = (),
                      env_vars: Mapping[str, str] | None = None, metadata: Mapping[str, str] | None = None,
                      submission_id: str | None = None, on_log: Callable[[str], None] | None = None,
                      on_submitted: Callable[[str], None] | None = None) -> JobOutcome:
    """Submit ``entrypoint`` with ``working_dir`` as its working directory (and ``env_vars`` in its environment:
    nothing secret, Ray logs them), stream its log to ``on_log`` as it grows, and return once the job has ended.
    Nothing is submitted if the cluster is unreachable or refuses the token, or if the working directory is over
    Ray's upload limit."""
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="rayline-job-") as scratch:
        package = pack(working_dir, Path(scratch), excludes)
        runtime_env = {"working_dir": str(package), **({"env_vars": dict(env_vars)} if env_vars else {})}
        job_id = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                                 metadata=dict(metadata or {}))
    if on_submitted:
        on_submitted(job_id)
    return follow(jobs, job_id, on_log)


def follow(jobs: JobSubmissionClient, job_id: str, on_log: Callable[[str], None] | None = None) -> JobOutcome:
    """Stream job ``job_id``'s log to ``on_log`` until the job ends; its outcome."""
    shown = 0
    while True:
        status = jobs.get_job_status(job_id)
        logs = jobs.get_job_logs(job_id)  # read after the status: a job seen ended has its whole log here
        if on_log and len(logs) > shown:
            on_log(logs[shown:])
        shown = len(logs)
        if status.is_terminal():
            info = jobs.get_job_info(job_id)
            return JobOutcome(job_id, status.value, info.message or "", logs)
        time.sleep(POLL_S)
