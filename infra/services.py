"""Local servers: a Prefect server (API + UI) and an MLflow tracking server, run in the background.

Each server keeps ``<name>.pid`` and ``<name>.log`` under ``STEELQC_HOME/servers/``; :func:`start` returns only
once the server answers its health check (or raises with the end of its log), :func:`stop` terminates the whole
process group (MLflow forks workers) and waits. Storage: SQLite files under ``STEELQC_HOME`` by default; with
``database_url`` (PostgreSQL) each service gets its own database (``<prefix>_prefect``, ``<prefix>_mlflow``),
created on first start, because MLflow and Optuna both keep an ``alembic_version`` table and Prefect needs the
``postgresql+asyncpg://`` driver.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from steelqc.infra.mlflow_auth import MlflowAuth
from steelqc.tasks import redact
from steelqc.tasks.config import database_for, mask_url

log = logging.getLogger(__name__)

SERVICES = ("prefect", "mlflow")


class ServiceError(RuntimeError):
    """A server that would not start (its log tail is in the message)."""


@dataclass(frozen=True)
class ServicePlan:
    """How to run one server: command, environment, where it answers."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health_url: str
    url: str
    storage: str


def ensure_database(base_url: str, database: str) -> None:
    """Create ``database`` on the server of ``base_url`` unless it exists."""
    admin = database_for(base_url, urlsplit(base_url).path.lstrip("/") or "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
            log.info("created database %s", database)


def _bin(name: str) -> str:
    """An executable next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def plans(
    home: Path,
    host: str,
    prefect_port: int,
    mlflow_port: int,
    mlflow_store: str,
    artifact_root: Path | str,
    database_url: str | None = None,
    db_prefix: str = "steelqc",
    s3_endpoint_url: str | None = None,
    mlflow_auth: MlflowAuth | None = None,
) -> dict[str, ServicePlan]:
    """The two servers' commands for these settings (pure: creates nothing).

    ``artifact_root``: MLflow's artifact store, a folder or a URI (``s3://bucket/prefix``, through
    ``s3_endpoint_url`` when given; the server proxies artifacts, so clients need no S3 credentials).
    ``mlflow_auth``: MLflow's basic-auth app (``infra/mlflow_auth.py``). The MLflow store's URL travels in the
    server's environment (``MLFLOW_BACKEND_STORE_URI``), never on its command line (``ps`` shows that to anyone).
    """
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    prefect_home = home / "prefect"
    prefect_db = (
        database_for(database_url, f"{db_prefix}_prefect", "asyncpg")
        if database_url
        else f"sqlite+aiosqlite:///{(prefect_home / 'prefect.db').resolve()}"
    )
    prefect_env = {
        **base_env,
        "PREFECT_HOME": str(prefect_home.resolve()),
        "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://{host}:{prefect_port}/api",
    }
    prefect_url = f"http://{host}:{prefect_port}"
    mlflow_url = f"http://{host}:{mlflow_port}"
    mlflow_env = {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_BACKEND_STORE_URI": mlflow_store}
    if mlflow_auth is not None:
        mlflow_env.update(mlflow_auth.env())
    if s3_endpoint_url:
        mlflow_env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint_url
    return {
        "prefect": ServicePlan(
            name="prefect",
            argv=[_bin("prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
            env=prefect_env,
            health_url=f"{prefect_url}/api/health",
            url=prefect_url,
            storage=mask_url(prefect_db),
        ),
        "mlflow": ServicePlan(
            name="mlflow",
            argv=[
                _bin("mlflow"),
                "server",
                "--host",
                host,
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--artifacts-destination",
                artifacts_uri(artifact_root),
                *(mlflow_auth.argv() if mlflow_auth is not None else []),
            ],
            env=mlflow_env,
            health_url=f"{mlflow_url}/health",
            url=mlflow_url,
            storage=mask_url(mlflow_store),
        ),
    }


def artifacts_uri(destination: Path | str) -> str:
    """MLflow's ``--artifacts-destination`` for a folder (as a ``file://`` URI) or a URI such as ``s3://b/p``."""
    text = str(destination)
    if "://" in text:
        return text
    return Path(text).resolve().as_uri()


def _paths(home: Path, name: str) -> tuple[Path, Path]:
    folder = home / "servers"
    return folder / f"{name}.pid", folder / f"{name}.log"


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this very process counts as gone
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that died and waits for its parent to reap it (a server killed with ``kill -9`` whose starter had
    exited): gone, so a restart need not wait for it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return any(line.startswith("State:") and "Z" in line.split()[1:2] for line in status.splitlines())


def read_pid(home: Path, name: str) -> int | None:
    pid_file, _ = _paths(home, name)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def status(home: Path, plan: ServicePlan) -> dict:
    """pid, health and where the log is, for one server."""
    pid_file, log_file = _paths(home, plan.name)
    pid = read_pid(home, plan.name)
    return {
        "name": plan.name,
        "running": pid is not None,
        "healthy": healthy(plan.health_url, 1.0),
        "pid": pid,
        "url": plan.url,
        "storage": plan.storage,
        "log": str(log_file),
        "pid_file": str(pid_file),
    }


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _spawn(home: Path, plan: ServicePlan) -> subprocess.Popen | None:
    """Launch ``plan`` in its own session unless steelqc's one already answers; None when it does."""
    pid_file, log_file = _paths(home, plan.name)
    pid = read_pid(home, plan.name)
    if pid is not None and healthy(plan.health_url):
        return None
    if pid is not None:
        stop(home, plan.name)
    if healthy(plan.health_url, 1.0):
        raise ServiceError(f"{plan.name}: something else already answers on {plan.url} (not started by steelqc)")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        out.write(
            redact.redact(f"\n--- steelqc server start {time.strftime('%Y-%m-%d %H:%M:%S')}: {plan.argv}\n").encode()
        )
        out.flush()
        proc = subprocess.Popen(
            plan.argv, env=plan.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    pid_file.write_text(str(proc.pid))
    return proc


def start_all(home: Path, plans_: list[ServicePlan], timeout_s: float = 120.0) -> dict[str, dict]:
    """Start the servers side by side and wait until every one is healthy (idempotent).

    On failure the ones started here are stopped again and :class:`ServiceError` carries the log tail.
    """
    launched: dict[str, subprocess.Popen] = {}
    try:
        for plan in plans_:
            proc = _spawn(home, plan)
            if proc is not None:
                launched[plan.name] = proc
        deadline = time.monotonic() + timeout_s
        waiting = [p for p in plans_ if p.name in launched]
        while waiting:
            for plan in list(waiting):
                proc, log_file = launched[plan.name], _paths(home, plan.name)[1]
                if healthy(plan.health_url):
                    log.info("%s server up at %s (pid %d, log %s)", plan.name, plan.url, proc.pid, log_file)
                    waiting.remove(plan)
                elif proc.poll() is not None:
                    _paths(home, plan.name)[0].unlink(missing_ok=True)
                    raise ServiceError(
                        f"{plan.name} exited with code {proc.returncode}; log {log_file}:\n{_tail(log_file)}"
                    )
                elif time.monotonic() > deadline:
                    raise ServiceError(
                        f"{plan.name} not healthy after {timeout_s:.0f} s; log {log_file}:\n{_tail(log_file)}"
                    )
            time.sleep(0.5)
    except Exception:
        for name in launched:
            stop(home, name)
        raise
    return {plan.name: {**status(home, plan), "started": plan.name in launched} for plan in plans_}


def stop(home: Path, name: str, timeout_s: float = 30.0) -> dict:
    """SIGTERM the server's process group, SIGKILL after ``timeout_s``; removes the pid file."""
    pid_file, _ = _paths(home, name)
    pid = read_pid(home, name)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return {"name": name, "stopped": False, "reason": "not running"}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = False
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        killed = True
    pid_file.unlink(missing_ok=True)
    log.info("%s server stopped (pid %d%s)", name, pid, ", killed" if killed else "")
    return {"name": name, "stopped": True, "pid": pid, "killed": killed}


# ------------------------------------------------------------------------------ temporary Prefect server

TEMPORARY = "temporary-prefect"
_PR_SET_PDEATHSIG = 1
_TEMPORARY_APP = "prefect.server.api.server:create_app"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with(parent: int) -> None:
    """In the child, before exec: have Linux SIGTERM it when ``parent`` dies, ``kill -9`` included."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def reap_orphans(home: Path) -> list[int]:
    """Stop temporary servers whose owning steelqc process is gone (killed before it could stop them).

    Each temporary server leaves ``servers/temporary-prefect-<owner pid>.json``; a server is stopped only when its
    owner is dead and its command line is still a Prefect server (a recycled pid is never killed).
    """
    reaped = []
    for record in sorted((home / "servers").glob(f"{TEMPORARY}-*.json")):
        try:
            info = json.loads(record.read_text())
            owner, pid = int(info["owner"]), int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if _alive(owner):
            continue
        if _alive(pid) and _TEMPORARY_APP in _cmdline(pid):
            _stop_group(pid, 10.0)
            log.warning("stopped temporary Prefect server pid %d left behind by dead process %d", pid, owner)
            reaped.append(pid)
        record.unlink(missing_ok=True)
    return reaped


def _stop_group(pid: int, timeout_s: float) -> None:
    """SIGTERM the process group of ``pid``, SIGKILL after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def temporary_prefect(home: Path, timeout_s: float = 90.0, die_with_parent: bool = True) -> Iterator[str]:
    """A Prefect API server for the duration of one command (what Prefect's own temporary server does), that
    cannot outlive its command: Linux stops it when the command dies (``PR_SET_PDEATHSIG``), and the next
    command stops any that was left behind anyway (:func:`reap_orphans`). Yields the API URL.

    Runs and their history live in Prefect's own database (``PREFECT_HOME``), as in Prefect's local mode.
    """
    reap_orphans(home)
    folder = home / "servers"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    record, log_file = folder / f"{TEMPORARY}-{os.getpid()}.json", folder / f"{TEMPORARY}.log"
    argv = [sys.executable, "-m", "uvicorn", "--factory", _TEMPORARY_APP, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", "error", "--lifespan", "on"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(PREFECT_UI_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    parent = os.getpid()
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=(lambda: _die_with(parent)) if die_with_parent and sys.platform == "linux" else None,
        )  # fmt: skip
    record.write_text(json.dumps({"pid": proc.pid, "owner": parent, "port": port}))
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout_s
        while not healthy(f"{url}/health", 1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"temporary Prefect server did not start; log {log_file}:\n{_tail(log_file)}")
            time.sleep(0.2)
        log.info("temporary Prefect server at %s (pid %d; `steelqc server start` keeps one running)", url, proc.pid)
        yield url
    finally:
        _stop_group(proc.pid, 10.0)
        with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        record.unlink(missing_ok=True)
