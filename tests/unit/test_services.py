"""Pure parts of the operations layer: database URLs per service, server commands, reviewer identity; a dead server
is not running."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from steelqc.infra import services
from steelqc.infra.services import plans
from steelqc.model_registry.approval import same_identity
from steelqc.tasks.config import Settings, database_for


def test_one_database_per_service_with_its_driver() -> None:
    base = "postgresql://steelqc:secret@127.0.0.1:5433/postgres?sslmode=disable"
    assert database_for(base, "steelqc_prefect", "asyncpg") == (
        "postgresql+asyncpg://steelqc:secret@127.0.0.1:5433/steelqc_prefect?sslmode=disable"
    )
    assert database_for(base, "steelqc_mlflow", "psycopg").startswith("postgresql+psycopg://")
    with pytest.raises(ValueError, match="postgresql"):
        database_for("mysql://x@h/db", "steelqc_prefect")
    with pytest.raises(ValueError, match="postgresql"):  # caught when the settings load, not when a server starts
        Settings(database_url="mysql://x@h/db")


def test_settings_point_mlflow_at_its_own_database() -> None:
    settings = Settings(database_url="postgresql://u@h:1/postgres")
    assert settings.mlflow_uri == "postgresql+psycopg://u@h:1/steelqc_mlflow"
    assert Settings(database_url="postgresql://u@h:1/postgres", tracking_uri="http://m:5000").mlflow_uri == (
        "http://m:5000"
    )
    assert Settings().mlflow_uri.startswith("sqlite:///")


def test_server_commands(tmp_path: Path) -> None:
    p = plans(tmp_path, "127.0.0.1", 4200, 5000, "sqlite:///x.db", tmp_path / "art")
    assert p["prefect"].argv[-5:] == ["start", "--host", "127.0.0.1", "--port", "4200"]
    assert p["prefect"].env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("sqlite+aiosqlite:///")
    assert p["prefect"].health_url == "http://127.0.0.1:4200/api/health"
    assert p["mlflow"].env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert p["mlflow"].argv[p["mlflow"].argv.index("--workers") + 1] == "1"
    pg = plans(tmp_path, "127.0.0.1", 4200, 5000, "x", tmp_path, "postgresql://u:pw@h:1/postgres")
    assert pg["prefect"].env["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://u:pw@h:1/steelqc_prefect"
    assert "pw" not in pg["prefect"].storage  # what status prints is masked


def test_mlflow_artifacts_in_a_folder_or_in_s3(tmp_path: Path) -> None:
    local = plans(tmp_path, "127.0.0.1", 4200, 5000, "sqlite:///x.db", tmp_path / "art")["mlflow"]
    assert local.argv[local.argv.index("--artifacts-destination") + 1] == (tmp_path / "art").resolve().as_uri()
    s3 = plans(
        tmp_path, "127.0.0.1", 4200, 5000, "sqlite:///x.db", "s3://steelqc/mlflow", s3_endpoint_url="http://minio:9000"
    )["mlflow"]
    assert s3.argv[s3.argv.index("--artifacts-destination") + 1] == "s3://steelqc/mlflow"
    assert s3.env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"  # the server writes there; clients go through it


@pytest.mark.parametrize(
    ("reviewer", "started_by", "same"),
    [
        ("alice", "alice", True),
        ("Alice ", "alice@plant-3", True),
        ("alice@plant-3", "alice", True),
        ("bob", "alice@plant-3", False),
        ("", "alice", False),
    ],
)
def test_reviewer_identity(reviewer: str, started_by: str, same: bool) -> None:
    assert same_identity(reviewer, started_by) is same


def test_a_killed_server_waiting_to_be_reaped_is_not_running() -> None:
    """A zombie (dead, not yet reaped by its parent) is not running: `steelqc server start` after a `kill -9` of the
    server need not wait out its stop timeout."""
    # `sh` starts a child that exits a moment later and becomes `sleep`, which never reaps it: a zombie, not our child
    proc = subprocess.Popen(["sh", "-c", "sleep 0.3 & echo $!; exec sleep 5"], stdout=subprocess.PIPE, text=True)
    try:
        zombie = int(proc.stdout.readline())
        deadline = time.monotonic() + 5
        while "Z" not in Path(f"/proc/{zombie}/status").read_text().split("State:")[1][:4]:
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.05)
        assert not services._alive(zombie)
        assert services._alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
