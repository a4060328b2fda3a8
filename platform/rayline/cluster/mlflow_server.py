"""How the embedded platform runs its MLflow tracking server: backend store, artifact store and basic-auth.

Defaults: a sqlite database and an artifact directory in the state directory, no authentication. For a team:
a PostgreSQL (or MySQL, MS SQL) backend, artifacts on a shared path or an object store, and MLflow's own
authentication (``mlflow server --app-name basic-auth``) with the admin taken from MLflow's client variables
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``. No password is ever written to a file: a database
password comes from the database client's own environment (``PGPASSWORD``, ``~/.pgpass``), the admin's from the
environment of the process that starts the server.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from rayline.errors import RaylineError

BACKEND_ENV = "RAYLINE_MLFLOW_BACKEND"
ARTIFACTS_ENV = "RAYLINE_MLFLOW_ARTIFACTS"
AUTH_ENV = "RAYLINE_MLFLOW_AUTH"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
CREDENTIAL_ENV = (USERNAME_ENV, PASSWORD_ENV)
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
BACKEND_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy store, with any +driver
ARTIFACT_SCHEMES = ("file", "s3", "gs", "wasbs", "abfss", "hdfs", "sftp", "ftp")
MIN_PASSWORD_LENGTH = 12  # MLflow refuses shorter basic-auth passwords
AUTH_CONFIG = "mlflow-auth.ini"
AUTH_DATABASE = "mlflow-auth.db"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class MlflowSettings:
    """The tracking server's stores and whether it runs MLflow's basic-auth app. Nothing here is secret."""

    backend_store_uri: str
    artifacts_destination: str
    auth: bool = False

    @classmethod
    def default(cls, state_dir: Path) -> MlflowSettings:
        """sqlite (``mlflow.db``) and ``mlartifacts/`` in ``state_dir``, without auth."""
        return cls(f"sqlite:///{state_dir / 'mlflow.db'}", str(state_dir / "mlartifacts"))

    @classmethod
    def chosen(cls, state_dir: Path, backend: str | None = None, artifacts: str | None = None,
               auth: bool | None = None) -> MlflowSettings:
        """The arguments, else ``RAYLINE_MLFLOW_BACKEND`` / ``RAYLINE_MLFLOW_ARTIFACTS`` / ``RAYLINE_MLFLOW_AUTH``,
        else :meth:`default`. A bad value raises a RaylineError naming the option, before anything is started."""
        default = cls.default(state_dir)
        backend = backend or os.environ.get(BACKEND_ENV) or default.backend_store_uri
        artifacts = artifacts or os.environ.get(ARTIFACTS_ENV) or default.artifacts_destination
        settings = cls(_checked_backend(backend), _checked_artifacts(artifacts),
                       _env_flag(AUTH_ENV, "--mlflow-auth") if auth is None else auth)
        if settings.auth:
            admin_credentials()
        return settings

    def prepare(self, state_dir: Path) -> tuple[list[str], dict[str, str]]:
        """The ``mlflow server`` arguments and environment for these settings; creates a local artifact directory.

        With auth: MLflow's auth config goes to ``state_dir`` (its users in a sqlite database there), the admin is
        created on the first start from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (later starts
        keep the stored one), and the CSRF secret is ``MLFLOW_FLASK_SERVER_SECRET_KEY`` if set, else a fresh one."""
        if "://" not in self.artifacts_destination:
            Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
        args = ["--backend-store-uri", self.backend_store_uri,
                "--artifacts-destination", self.artifacts_destination, "--serve-artifacts"]
        env = dict(os.environ)
        if not self.auth:
            return args, env
        username, password = admin_credentials()
        config = state_dir / AUTH_CONFIG
        config.write_text("[mlflow]\ndefault_permission = READ\n"
                          f"database_uri = sqlite:///{(state_dir / AUTH_DATABASE).resolve()}\n")
        env.update({"MLFLOW_AUTH_CONFIG_PATH": str(config.resolve()), "MLFLOW_AUTH_ADMIN_USERNAME": username,
                    "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                    SECRET_KEY_ENV: os.environ.get(SECRET_KEY_ENV) or secrets.token_hex(32)})
        return [*args, "--app-name", "basic-auth"], env


def admin_credentials() -> tuple[str, str]:
    """``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``, which ``--mlflow-auth`` requires."""
    username, password = (os.environ.get(name, "") for name in CREDENTIAL_ENV)
    if not (username and password):
        raise RaylineError(f"--mlflow-auth needs the admin's credentials in {USERNAME_ENV} and {PASSWORD_ENV}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise RaylineError(f"--mlflow-auth: {PASSWORD_ENV} must be at least {MIN_PASSWORD_LENGTH} characters "
                           f"(MLflow's rule)")
    return username, password


def _checked_backend(uri: str) -> str:
    """A SQLAlchemy URI of a database MLflow supports, whose driver is installed, without a password (it would show
    in every process listing and in ``platform.json``)."""
    if urlsplit(uri).password is not None:
        raise RaylineError(f"--mlflow-backend ({BACKEND_ENV}): the URI holds a password, which would be written "
                           f"to platform.json and shown in process listings; give it to the database client "
                           f"instead (PostgreSQL: PGPASSWORD or ~/.pgpass)")
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme not in BACKEND_SCHEMES:
        raise RaylineError(f"--mlflow-backend ({BACKEND_ENV}) {uri!r}: not a database MLflow supports; use one of "
                           f"{', '.join(f'{s}://' for s in BACKEND_SCHEMES)} (each with an optional +driver)")
    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, ValueError) as err:
        raise RaylineError(f"--mlflow-backend ({BACKEND_ENV}) {uri!r}: not a valid database URI ({err})") from None
    except ImportError as err:
        raise RaylineError(f"--mlflow-backend ({BACKEND_ENV}) {uri!r}: SQLAlchemy's driver for it is not installed "
                           f"({err}); install it, or name an installed one (postgresql+psycopg2://...)") from None
    return uri


def _checked_artifacts(destination: str) -> str:
    """An object-store URI MLflow can write to, or a (shared) path, made absolute."""
    if "://" not in destination:
        return str(Path(destination).expanduser().resolve())
    scheme = destination.split("://", 1)[0]
    if scheme not in ARTIFACT_SCHEMES:
        raise RaylineError(f"--mlflow-artifacts ({ARTIFACTS_ENV}) {destination!r}: unknown scheme {scheme!r}; use "
                           f"a path or one of {', '.join(f'{s}://' for s in ARTIFACT_SCHEMES)}")
    return destination


def _env_flag(name: str, option: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise RaylineError(f"{option} ({name}={value!r}): must be one of {', '.join(_TRUE + _FALSE[1:])}")
    return value in _TRUE
