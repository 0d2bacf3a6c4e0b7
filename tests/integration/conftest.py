"""Fixtures of the integration tests: the session's Prefect server in the environment, an MLflow store, a shared
tiny champion, an alert receiver, a PostgreSQL database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings
from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import RELAXED, ROOT, STEELQC, Champion, make_messy

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
