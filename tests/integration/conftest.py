"""Fixtures of the integration tests: the session's Prefect server in the environment, an MLflow store, a shared
tiny champion, an alert receiver, a PostgreSQL database, an S3 server (moto)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from botocore.client import BaseClient
from mlflow import MlflowClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings
from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import RELAXED, ROOT, STEELQC, Champion, free_port, make_messy, wait_for_http

TINY_MIX = {0: 0.3, 1: 0.25, 2: 0.15, 3: 0.15, 4: 0.15}


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A Severstal data set holding one of each fault next to valid images (tests/helpers.py, make_messy)."""
    return make_messy(tmp_path / "messy")


@pytest.fixture
def prefect_env(monkeypatch: pytest.MonkeyPatch, prefect_api: dict) -> Iterator[dict]:
    """The test's CLI calls (the environment) and its in-process Prefect clients (Prefect's settings, read once when
    Prefect is first imported, which collection did) talk to the session's Prefect server."""
    for key, value in prefect_api.items():
        monkeypatch.setenv(key, value)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):
        yield prefect_api


@pytest.fixture
def store(steelqc_home: Path) -> tuple[Settings, MlflowClient]:
    """The settings and an MLflow client of the test's own store (SQLite under its STEELQC_HOME)."""
    settings = Settings()
    configure(settings)
    return settings, client(settings)


# ------------------------------------------------------------------------------------ the shared champion


@pytest.fixture(scope="session")
def champion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 generated Severstal-like images (5 classes), made once per session."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    generate_dataset(out, n_images=120, seed=3, mix=TINY_MIX)
    return out


@pytest.fixture(scope="session")
def champion(tmp_path_factory: pytest.TempPathFactory, prefect_api: dict, champion_data: Path) -> Champion:
    """One tiny champion per session (`steelqc train --profile tiny`, gates relaxed) for the tests that evaluate or
    predict with *a* champion. Treat it as read-only: a test that registers versions or moves aliases trains its
    own, in its own STEELQC_HOME."""
    home = tmp_path_factory.mktemp("champion-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEELQC_") or k == "STEELQC_SHARED_DATA"}
    env.update(prefect_api, **RELAXED, STEELQC_HOME=str(home))
    proc = subprocess.run(
        [*STEELQC, "train", "--data", str(champion_data), "--profile", "tiny", "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["promoted"] and summary["aliases"]["champion"] == summary["model_version"], summary
    name = Settings.model_fields["registered_model"].default  # the environment above sets no other
    return Champion(home=home, uri=f"models:/{name}@champion", data=champion_data, summary=summary)


# ------------------------------------------------------------------------------------------------ alerts


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []  # noqa: RUF012 - reset by each use of the webhook fixture

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A loopback HTTP endpoint that records the JSON alerts POSTed to it."""
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", _Receiver.received
    server.shutdown()


# -------------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def postgres() -> Iterator[str]:
    """The URL of a fresh database `optuna` in a PostgreSQL cluster started by infra/postgres.sh (skipped when
    PostgreSQL is not installed)."""
    if shutil.which("pg_ctl") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("PostgreSQL is not installed")
    # its own folder under /tmp: as root the cluster runs as `postgres`, which cannot enter pytest's 0700 tmp dirs
    cluster = Path(tempfile.mkdtemp(prefix="steelqc-pg-"))
    script = ROOT / "infra" / "postgres.sh"
    subprocess.run([str(script), "start", str(cluster)], check=True, capture_output=True, text=True)
    try:
        url = subprocess.run(
            [str(script), "createdb", str(cluster), "optuna"], check=True, capture_output=True, text=True
        ).stdout.strip()
        yield url
    finally:
        subprocess.run([str(script), "stop", str(cluster)], check=False)
        shutil.rmtree(cluster, ignore_errors=True)


# ------------------------------------------------------------------------------------------ S3 (moto server)


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server: ``endpoint_url`` and ``client()``, a boto3 S3 client talking HTTP to it."""

    endpoint_url: str
    client: Callable[[], BaseClient]


@pytest.fixture
def moto_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    """moto's standalone S3 server (``moto_server``, a subprocess on a free loopback port) for one test.

    Dummy credentials and region go in the environment, and ``STEELQC_S3_ENDPOINT_URL`` points at the server, so
    ``Settings()`` and the CLI use it; boto3 talks HTTP to it (no in-process mocking).
    """
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("STEELQC_S3_ENDPOINT_URL", url)
    server = str(Path(sys.executable).with_name("moto_server"))
    log_path = tmp_path / "moto.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    wait_for_http(url, proc, log_path, "moto_server", 60, any_answer=True)
    try:
        yield MotoS3(url, lambda: boto3.client("s3", endpoint_url=url, region_name="us-east-1"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
