"""MLflow for teams: `rayline up` runs its tracking server on a real PostgreSQL server, with artifacts on a shared
path and MLflow's basic-auth; every process that talks to MLflow (the driver, Ray Train's controller) takes the
credentials from the environment, no password lands in a file, and an unauthenticated client cannot move an
alias."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

import rayline
from conftest import PIPELINES, run_cli
from promotion_race import race_and_check
from rayline.cluster.embedded import RAY_POINTER, read_state
from rayline.cluster.mlflow_server import PASSWORD_ENV, USERNAME_ENV, MlflowSettings
from rayline.cluster.processes import free_port, session_members
from rayline.tracking.metrics import OUTAGE_TAG

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
PG_USER = "rayline"
DATABASE = "mlflow"
ADMIN = "rayline-admin"


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server on 127.0.0.1 whose user ``rayline`` logs in with ``password`` (scram-sha-256)."""

    port: int
    password: str

    @property
    def uri(self) -> str:
        """The MLflow backend URI: no password in it, the server's environment has PGPASSWORD."""
        return f"postgresql+psycopg2://{PG_USER}@{HOST}:{self.port}/{DATABASE}"

    def query(self, sql: str, *params: object) -> list[tuple]:
        import psycopg2

        with closing(psycopg2.connect(host=HOST, port=self.port, user=PG_USER, password=self.password,
                                      dbname=DATABASE)) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()


def _postgres_bin() -> Path:
    """The newest of Debian's PostgreSQL server installations; the test fails (not skips) without one."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): install it with "
                    "`apt-get install postgresql`")
    return found[-1].parent


def _as_postgres(*command: str, cwd: Path) -> None:
    """Run a PostgreSQL tool; as root, as the ``postgres`` user (initdb and the server refuse root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, *command], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command[0]} failed: {done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster with a ``mlflow`` database, stopped and deleted afterwards."""
    import psycopg2

    bin_dir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="rayline-pg-"))  # pytest's tmp dirs are closed to the postgres user
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    if os.geteuid() == 0:
        for path in (root, root / "pwfile"):
            shutil.chown(path, "postgres", "postgres")
    data, port = root / "data", free_port()
    try:
        _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=scram-sha-256",
                     f"--pwfile={root / 'pwfile'}", "--no-sync", cwd=root)
        _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
                     "-o", f"-c listen_addresses={HOST} -p {port} -k {root} -c fsync=off", "start", cwd=root)
        with closing(psycopg2.connect(host=HOST, port=port, user=PG_USER, password=password,
                                      dbname="postgres")) as connection:
            connection.autocommit = True
            connection.cursor().execute(f"CREATE DATABASE {DATABASE}")
        yield Postgres(port, password)
    finally:
        if (data / "postmaster.pid").exists():
            _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def _cli(*args: str, state_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``rayline ARGS`` with ``env`` added to this environment, and without the session platform's addresses
    (``mlflow.set_tracking_uri`` in this process, by any earlier in-process run, exports ``MLFLOW_TRACKING_URI``)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        return run_cli(*args, state_dir=state_dir)


@dataclass(frozen=True)
class TeamPlatform:
    state_dir: Path
    tracking_uri: str
    artifacts: Path
    credentials: dict[str, str]


@pytest.fixture(scope="module")
def team(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamPlatform]:
    """`rayline up --mlflow-backend <PostgreSQL> --mlflow-artifacts <shared dir> --mlflow-auth` in a state
    directory of its own, the admin's credentials only in its environment (never in this process's): its Ray
    processes inherit them."""
    state, artifacts = tmp_path_factory.mktemp("team-state"), tmp_path_factory.mktemp("shared-artifacts")
    credentials = {USERNAME_ENV: ADMIN, PASSWORD_ENV: secrets.token_urlsafe(16)}
    pointer = RAY_POINTER.read_text() if RAY_POINTER.is_file() else None  # the session's cluster, if running
    try:
        done = _cli("up", "--num-cpus", "4", "--mlflow-backend", postgres.uri, "--mlflow-artifacts", str(artifacts),
                    "--mlflow-auth", state_dir=state, env={**credentials, "PGPASSWORD": postgres.password})
        assert done.returncode == 0, done.stdout + done.stderr
        yield TeamPlatform(state, read_state(state).tracking_uri, artifacts, credentials)
    finally:
        stopped = run_cli("down", state_dir=state)
        if pointer is not None:  # `ray start` pointed Ray's "latest cluster" at ours, `down` removed it
            RAY_POINTER.write_text(pointer)
        assert stopped.returncode == 0, stopped.stderr


def _registered(team: TeamPlatform, name: str, versions: int) -> str:
    """As the admin: a finished run with a small artifact, registered as ``versions`` versions of ``name``,
    ``name@champion`` on version 1. Returns the run id."""
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as patch:
        for variable, value in team.credentials.items():
            patch.setenv(variable, value)
        client = MlflowClient(team.tracking_uri)
        run = client.create_run(client.create_experiment(name))
        client.log_metric(run.info.run_id, "accuracy", 0.9)
        client.log_text(run.info.run_id, "weights", "model/weights.txt")
        client.set_terminated(run.info.run_id)
        client.create_registered_model(name)
        for _ in range(versions):
            client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
        rayline.promote(name, 1, tracking_uri=team.tracking_uri)
    return run.info.run_id


def _files_holding(root: Path, *secrets_: str) -> list[str]:
    return [str(file) for file in root.rglob("*")
            if file.is_file() and any(secret.encode() in file.read_bytes() for secret in secrets_)]


def _ray_logs(team: TeamPlatform) -> Path:
    """The log directory of the team platform's Ray session (its processes name their session)."""
    for process in session_members(read_state(team.state_dir).ray_group):
        for arg in process.info["cmdline"] or []:
            if arg.startswith("--session-name="):
                return RAY_POINTER.parent / arg.partition("=")[2] / "logs"
    raise AssertionError("no process of the team platform's Ray session names its session")


def _champion(postgres: Postgres, name: str) -> list[tuple]:
    return postgres.query("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'",
                          name)


def test_runs_models_and_aliases_land_in_postgresql(team: TeamPlatform, postgres: Postgres, unique: str) -> None:
    run_id = _registered(team, unique, versions=1)
    assert postgres.query("SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
    assert postgres.query("SELECT key, value FROM latest_metrics WHERE run_uuid = %s", run_id) == [("accuracy", 0.9)]
    assert postgres.query("SELECT name FROM registered_models WHERE name = %s", unique) == [(unique,)]
    assert _champion(postgres, unique) == [(1,)]
    assert not (team.state_dir / "mlflow.db").exists()  # no sqlite next to it
    [artifact] = team.artifacts.rglob("weights.txt")  # on the shared path, written through the server
    assert artifact.read_text() == "weights" and run_id in artifact.parts

    recorded = json.loads((team.state_dir / "platform.json").read_text())
    assert (recorded["mlflow_backend"], recorded["mlflow_artifacts"], recorded["mlflow_auth"]) == (
        postgres.uri, str(team.artifacts), True)
    status = json.loads(run_cli("status", state_dir=team.state_dir).stdout)
    assert (status["mlflow"], status["mlflow_backend"], status["mlflow_auth"]) == ("up", postgres.uri, True)
    # platform.json, the logs, MLflow's auth config and user database
    assert _files_holding(team.state_dir, team.credentials[PASSWORD_ENV], postgres.password) == []


def test_an_unauthenticated_alias_move_is_refused(team: TeamPlatform, postgres: Postgres, unique: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    _registered(team, unique, versions=2)
    for variable in team.credentials:
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(team.tracking_uri).set_registered_model_alias(unique, "champion", "2")
    with pytest.raises(MlflowException, match="401"):
        rayline.promote(unique, 2, tracking_uri=team.tracking_uri)
    refused = run_cli("promote", unique, "--version", "2", "--tracking-uri", team.tracking_uri,
                      state_dir=team.state_dir)
    assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
    assert _champion(postgres, unique) == [(1,)]  # unchanged

    for variable, value in team.credentials.items():
        monkeypatch.setenv(variable, value)
    assert rayline.promote(unique, 2, tracking_uri=team.tracking_uri) == "1"
    assert _champion(postgres, unique) == [(2,)]


def test_concurrent_promotions_on_postgresql_leave_the_best_version_and_every_move(
        team: TeamPlatform, postgres: Postgres, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    for variable, value in team.credentials.items():  # the racing processes inherit them
        monkeypatch.setenv(variable, value)
    # one round: every request to the authenticating server checks a password hash
    rounds = race_and_check(MlflowClient(team.tracking_uri), team.tracking_uri, unique, tmp_path, rounds=1)
    for name, values in rounds.items():  # what PostgreSQL holds
        assert _champion(postgres, name) == [(values.index(max(values)) + 1,)]


def test_a_training_run_reaches_the_team_server_from_ray(team: TeamPlatform, postgres: Postgres,
                                                         unique: str) -> None:
    """`rayline run` on the team platform: Ray Train's controller logs every epoch live (a refused epoch would be
    filled in later, under the outage tag), so the credentials reached it; none is in Ray's logs."""
    assert PASSWORD_ENV not in os.environ  # the Ray processes have them from `rayline up`, not from this test
    done = _cli("run", str(PIPELINES / "digits.yaml"), "--set", "train.epochs=1",
                "--set", "train.scaling.num_workers=1", "--set", f"tracking.experiment={unique}",
                "--set", f"tracking.model_name={unique}", state_dir=team.state_dir, env=team.credentials)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = re.search(r"run id\s+(\w+)", done.stdout).group(1)
    assert postgres.query("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train_loss'", run_id)
    assert postgres.query("SELECT key FROM tags WHERE run_uuid = %s AND key = %s", run_id, OUTAGE_TAG) == []
    assert postgres.query("SELECT version FROM model_versions WHERE name = %s", unique) == [(1,)]
    assert list(team.artifacts.rglob("MLmodel"))  # the model, on the shared artifact store
    assert _files_holding(_ray_logs(team), team.credentials[PASSWORD_ENV]) == []


def test_an_exported_serve_config_holds_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from rayline.serving.config import write_serve_config
    from rayline.spec import load_service_spec

    spec = load_service_spec(PIPELINES.parent / "serving" / "digits.yaml")
    without = write_serve_config(spec, "serving/digits.yaml")
    monkeypatch.setenv(USERNAME_ENV, ADMIN)
    monkeypatch.setenv(PASSWORD_ENV, "a-long-enough-secret")
    exported = write_serve_config(spec, "serving/digits.yaml", "http://127.0.0.1:5000")
    assert "a-long-enough-secret" not in exported and "credentials are not written" not in without
    assert f"the replicas read {USERNAME_ENV} and {PASSWORD_ENV}\n# from the cluster's environment" in exported


@pytest.mark.parametrize(("settings", "message"), [
    ({"mlflow_backend": "mongodb://db/mlflow"}, "--mlflow-backend (RAYLINE_MLFLOW_BACKEND) 'mongodb://db/mlflow'"),
    ({"mlflow_backend": "postgresql://me:secret@db/mlflow"}, "the URI holds a password"),
    ({"mlflow_backend": "mongodb://me:secret@db/mlflow"}, "the URI holds a password"),
    ({"mlflow_backend": "mysql://db/mlflow"}, "SQLAlchemy's driver for it is not installed"),
    ({"mlflow_backend": "postgresql+nodriver://db/mlflow"}, "not a valid database URI"),
    ({"mlflow_artifacts": "s4://bucket/x"}, "--mlflow-artifacts (RAYLINE_MLFLOW_ARTIFACTS) 's4://bucket/x'"),
    ({"mlflow_auth": True}, "--mlflow-auth needs the admin's credentials in MLFLOW_TRACKING_USERNAME"),
])
def test_bad_mlflow_settings_are_refused_before_anything_starts(settings: dict[str, object], message: str,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(rayline.RaylineError) as refused:
        rayline.up(tmp_path / "state", **settings)
    assert message in str(refused.value) and "secret" not in str(refused.value)
    assert not (tmp_path / "state").exists()  # not even the state directory


def test_a_short_admin_password_is_refused_on_the_command_line(tmp_path: Path) -> None:
    done = _cli("up", state_dir=tmp_path, env={"RAYLINE_MLFLOW_AUTH": "1", USERNAME_ENV: ADMIN,
                                                PASSWORD_ENV: "short"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == ("error: --mlflow-auth: MLFLOW_TRACKING_PASSWORD must be at least 12 characters "
                                   "(MLflow's rule)")
    assert list(tmp_path.iterdir()) == []


def test_state_files_from_before_the_mlflow_settings_still_load(tmp_path: Path) -> None:
    old = {"ray_port": 1, "dashboard_port": 2, "mlflow_port": 3, "mlflow_pid": 4, "ray_group": 5, "num_cpus": 4,
           "state_dir": str(tmp_path), "ingress": "proxy"}
    (tmp_path / "platform.json").write_text(json.dumps(old))
    assert read_state(tmp_path).mlflow == MlflowSettings.default(tmp_path)
