"""MLflow's basic-auth app for the tracking server of `steelqc server start` (setting ``mlflow_auth``).

The server runs ``mlflow server --app-name basic-auth``: every request but ``/health`` needs HTTP basic credentials
(401 without). Its configuration, ``STEELQC_HOME/servers/mlflow-auth.ini`` (mode 0600), names the users' database:
``<database_prefix>_mlflow_auth`` on the PostgreSQL server of ``database_url`` (the database compose uses), else
SQLite ``STEELQC_HOME/mlflow-auth.db``. The admin is ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, the
variables every MLflow client (steelqc's included) sends; they reach the server through its environment
(``MLFLOW_AUTH_ADMIN_USERNAME``/``_PASSWORD``), never its command line or a file, and MLflow reads them only to
create the admin in an empty users' database (afterwards change a password through MLflow's API). Flask's session
key is ``MLFLOW_FLASK_SERVER_SECRET_KEY`` when set, else a random key kept in ``servers/mlflow-secret-key`` (0600).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from steelqc.tasks.config import database_for

USER_VAR, PASSWORD_VAR, KEY_VAR = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
CONFIG_FILE, KEY_FILE, SQLITE_FILE = "mlflow-auth.ini", "mlflow-secret-key", "mlflow-auth.db"
AUTH_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"


class AuthSetupError(ValueError):
    """Basic auth is on but cannot be set up (missing admin credentials); the message says what to set."""


@dataclass(frozen=True)
class MlflowAuth:
    """What the MLflow server needs for basic auth: the users' database, the admin, Flask's key, the ini path."""

    database_uri: str
    admin_username: str
    admin_password: str = field(repr=False)
    secret_key: str = field(repr=False)
    config_path: Path

    def argv(self) -> list[str]:
        """Arguments added to ``mlflow server``."""
        return ["--app-name", "basic-auth"]

    def env(self) -> dict[str, str]:
        """Variables added to the server's environment (the secrets travel here, never on the command line)."""
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(self.config_path),
            "MLFLOW_AUTH_ADMIN_USERNAME": self.admin_username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
            KEY_VAR: self.secret_key,
        }

    def config_text(self) -> str:
        """The ini MLflow's auth app reads: users' database, READ for users without a grant, the auth function."""
        return (
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {self.database_uri}\n"
            f"authorization_function = {AUTH_FUNCTION}\n"
            "grant_default_workspace_access = false\n"
        )


def auth_database(home: Path, database_url: str | None, prefix: str) -> str:
    """The users' database: ``<prefix>_mlflow_auth`` on the PostgreSQL server, else SQLite under ``home``."""
    if database_url:
        return database_for(database_url, f"{prefix}_mlflow_auth", "psycopg")
    return f"sqlite:///{(home / SQLITE_FILE).resolve()}"


def _secret_key(home: Path, env: Mapping[str, str]) -> str:
    """Flask's session key: the variable when set, else the one kept under ``servers/`` (made on first use)."""
    if env.get(KEY_VAR):
        return env[KEY_VAR]
    path = home / "servers" / KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    _write_private(path, key + "\n")
    return key


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never world-readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def from_settings(
    home: Path, database_url: str | None, prefix: str, env: Mapping[str, str] | None = None
) -> MlflowAuth:
    """Basic auth for these settings, the admin from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``;
    :class:`AuthSetupError` naming them when either is missing."""
    env = os.environ if env is None else env
    missing = [name for name in (USER_VAR, PASSWORD_VAR) if not env.get(name)]
    if missing:
        raise AuthSetupError(
            f"mlflow_auth is on but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: set the "
            "MLflow admin's user name and password there (clients send the same variables)"
        )
    return MlflowAuth(
        database_uri=auth_database(home, database_url, prefix),
        admin_username=env[USER_VAR],
        admin_password=env[PASSWORD_VAR],
        secret_key=_secret_key(home, env),
        config_path=(home / "servers" / CONFIG_FILE).resolve(),
    )


def write_config(auth: MlflowAuth) -> Path:
    """Write the ini (0600: it may hold the users' database URL with its password); its path."""
    auth.config_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(auth.config_path, auth.config_text())
    return auth.config_path
