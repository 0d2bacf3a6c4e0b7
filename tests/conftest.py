"""Fixtures for every test folder: an isolated STEELQC_HOME per test and one real Prefect server per session.

Each folder's own fixtures are in its conftest.py; helper functions shared between folders in tests/helpers.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for_http


@pytest.fixture(autouse=True)
def steelqc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own STEELQC_HOME and no stray settings from the environment."""
    for key in list(os.environ):
        if key.startswith("STEELQC_") and key != "STEELQC_SHARED_DATA":
            monkeypatch.delenv(key)
    home = tmp_path / "steelqc-home"
    monkeypatch.setenv("STEELQC_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """A real Prefect server on loopback for the session (saves every CLI call its own temporary server)."""
    port = free_port()
    home = tmp_path_factory.mktemp("prefect-home")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/api"
    wait_for_http(f"{url}/health", proc, home / "server.log", "Prefect server", 90)
    yield {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
