"""The pure parts of fault handling: retry bounds, which failures are a server or a full disk, the give-up messages,
the zombie automation's rule (README "Faults and retries")."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import ValidationError

from steelqc.flows.faults import explain
from steelqc.flows.heartbeats import END_STATES, HEARTBEAT, zombie_automation
from steelqc.model_registry.store import bound_http_retries
from steelqc.tasks.config import Settings
from steelqc.tasks.faults import MlflowRetries, PrefectRetries, disk_full, fullest, unreachable


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_retry_bounds() -> None:
    mlflow_defaults = MlflowRetries(retries=7, backoff_s=2, timeout_s=120)
    assert mlflow_defaults.waits() == [0.0, 5.0, 9.0, 17.0, 33.0, 65.0, 120.0]  # about 4 min against a dead server
    ours = MlflowRetries(retries=4, backoff_s=1, timeout_s=60)
    assert ours.tries == 5 and ours.waits() == [0.0, 3.0, 5.0, 9.0] and ours.refused_s() == 17.0
    assert ours.hung_s() == 17.0 + 5 * 60
    assert MlflowRetries(0, 1, 60).waits() == [] and MlflowRetries(1, 1, 60).refused_s() == 0.0
    assert ours.environ() == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    }


def test_prefect_retry_bounds() -> None:
    assert PrefectRetries(5).tries == 6 and PrefectRetries(5).worst_s() == pytest.approx(1.2 * 62)
    assert PrefectRetries(0).worst_s() == 0


def test_settings_bound_every_retry_and_keep_heartbeats_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.mlflow_http_retries, settings.mlflow_http_backoff_s, settings.mlflow_http_timeout_s) == (4, 1, 60)
    assert (settings.prefect_client_retries, settings.flow_heartbeat_s, settings.zombie_after_s) == (5, 60, 300)
    with pytest.raises(ValidationError, match="zombie_after_s"):
        Settings(flow_heartbeat_s=60, zombie_after_s=60)
    with pytest.raises(ValidationError):
        Settings(flow_heartbeat_s=10)  # Prefect's own floor is 30 s
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    bound_http_retries(Settings(mlflow_http_retries=2))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


def test_a_refused_mlflow_call_is_recognised_by_its_server_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(MlflowException) as caught:
        MlflowClient(url).search_experiments()
    assert unreachable(caught.value, url) == "connection refused"
    assert unreachable(caught.value, f"http://127.0.0.1:{closed_port()}") is None  # another server
    assert unreachable(ValueError("bad value"), url) is None
    wrapped = RuntimeError("register failed")
    wrapped.__cause__ = caught.value
    assert unreachable(wrapped, url) == "connection refused"  # anywhere in the cause chain


def test_a_refused_prefect_call_is_recognised() -> None:
    url = f"http://127.0.0.1:{closed_port()}/api"
    with (
        temporary_settings(updates={PREFECT_API_URL: url}),
        get_client(sync_client=True) as client,
        pytest.raises(Exception) as caught,
    ):
        client.read_flow_runs()
    assert unreachable(caught.value, url) == "connection refused"


def test_disk_full_in_any_form() -> None:
    enospc = OSError(errno.ENOSPC, "No space left on device")
    outer = RuntimeError("evaluate failed")
    outer.__context__ = enospc
    assert disk_full(outer) is enospc
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    assert disk_full(sqlite3.OperationalError("database or disk is full")) is not None
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None


def test_fullest_measures_the_nearest_existing_folder(tmp_path: Path) -> None:
    space = fullest([tmp_path / "not" / "yet"])
    assert space is not None and space.path == tmp_path / "not" / "yet" and 0 <= space.free <= space.total
    assert fullest([]) is None


def test_give_up_messages_say_what_failed_how_long_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(MlflowException) as caught:
        MlflowClient(url).search_experiments()
    remote = Settings(home=tmp_path, tracking_uri=url, mlflow_http_retries=2)
    fault = explain(caught.value, remote, "run it again")
    assert fault is not None and fault.kind == "mlflow-unreachable"
    assert f"MLflow tracking server {url} unreachable (connection refused)" in fault.message
    assert "3 tries of one call over up to 3 s" in fault.message and fault.message.endswith("then run it again.")
    assert explain(caught.value, Settings(home=tmp_path), "again") is None  # a local store is never blamed

    full = explain(OSError(errno.ENOSPC, "No space left on device"), Settings(home=tmp_path), "run it again")
    assert full is not None and full.kind == "disk-full" and full.file is not None
    assert "No space left on device (ENOSPC)" in full.message and " free of " in full.message
    assert full.extra() == {"fault": "disk-full", "file": full.file}
    copy = OSError(errno.ENOSPC, "No space left on device", "/tmp/src.pt", None, str(tmp_path / "dst.pt"))
    copied = explain(copy, Settings(home=tmp_path), "again")  # shutil names a copy's source first
    assert copied is not None and copied.file == str(tmp_path / "dst.pt") and "/tmp/src.pt" not in copied.message
    assert explain(ValueError("a bug"), remote) is None


def test_zombie_automation_marks_a_run_crashed_after_its_window() -> None:
    automation = zombie_automation(Settings(flow_heartbeat_s=30, zombie_after_s=90))
    trigger = automation.trigger
    assert trigger.posture == "Proactive" and trigger.within.total_seconds() == 90
    assert trigger.after == {HEARTBEAT} and trigger.for_each == {"prefect.resource.id"}
    assert trigger.expect == {HEARTBEAT, *(f"prefect.flow-run.{s}" for s in END_STATES)}
    (action,) = automation.actions
    assert action.state == "CRASHED" and "no heartbeat for 90 s" in action.message
    assert "steelqc train --resume" in action.message
