"""Give-up messages: a fault from outside steelqc's code (an MLflow or Prefect server that does not answer, a full
disk; classified by :mod:`steelqc.tasks.faults`) as one error that says what failed, how long it was retried and
what to do (README "Faults and retries"). The CLI prints it (one JSON object under ``--json``) and exits 1.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steelqc.tasks.config import Settings
from steelqc.tasks.faults import MlflowRetries, PrefectRetries, disk_full, fullest, size, unreachable

RESUME = "run `steelqc train --resume` (it continues from the last checkpoint and reuses a version already registered)"
AGAIN = "run the command again"


@dataclass(frozen=True)
class Fault:
    """One give-up: ``kind`` (mlflow-unreachable, prefect-unreachable, disk-full), the message, the path involved."""

    kind: str
    message: str
    file: str | None = None

    def extra(self) -> dict[str, Any]:
        """The fields the CLI's JSON error carries besides ``error``."""
        return {"fault": self.kind, "file": self.file}


def explain(exc: BaseException, settings: Settings, then: str = AGAIN) -> Fault | None:
    """The give-up message for ``exc`` when it is one of these faults (None otherwise); ``then`` is what to do once
    the cause is fixed."""
    return disk_fault(exc, settings, then) or mlflow_fault(exc, settings, then) or prefect_fault(exc, settings, then)


def mlflow_fault(exc: BaseException, settings: Settings, then: str) -> Fault | None:
    """An MLflow tracking server that refused, dropped or kept failing every try of a call."""
    uri = settings.mlflow_uri
    reason = unreachable(exc, uri) if uri.startswith(("http://", "https://")) else None
    if reason is None:
        return None
    retries = MlflowRetries(
        settings.mlflow_http_retries, settings.mlflow_http_backoff_s, settings.mlflow_http_timeout_s
    )
    return Fault(
        "mlflow-unreachable",
        f"MLflow tracking server {uri} unreachable ({reason}): gave up after {retries.tries} tries of one call over "
        f"up to {retries.refused_s():.0f} s (settings mlflow_http_retries {retries.retries}, mlflow_http_backoff_s "
        f'{retries.backoff_s}; README "Faults and retries"). Start it (`steelqc server start`, or whatever serves '
        f"{uri}; its log is STEELQC_HOME/servers/mlflow.log), then {then}.",
    )


def prefect_fault(exc: BaseException, settings: Settings, then: str) -> Fault | None:
    """A Prefect API that refused, dropped or kept failing every try of a call."""
    url = os.environ.get("PREFECT_API_URL", "")
    reason = unreachable(exc, url) if url else None
    if reason is None:
        return None
    retries = PrefectRetries(settings.prefect_client_retries)
    return Fault(
        "prefect-unreachable",
        f"Prefect API {url} unreachable ({reason}): gave up after {retries.tries} tries of one call over up to "
        f"{retries.worst_s():.0f} s (setting prefect_client_retries {retries.retries}). The run could not record how "
        f"it ended; once the server is back it marks the run Crashed {settings.zombie_after_s} s after its last "
        f"heartbeat (setting zombie_after_s). Start the server (`steelqc server start`), then {then}.",
    )


def disk_fault(exc: BaseException, settings: Settings, then: str) -> Fault | None:
    """A full disk (ENOSPC, a quota, SQLite's "database or disk is full"), named with the fullest of steelqc's
    storage locations and its free space."""
    found = disk_full(exc)
    if found is None:
        return None
    # a copy names its source first and its destination, the file that did not fit, second
    failed = getattr(found, "filename2", None) or getattr(found, "filename", None)
    # the failed file's folder counts too: it may lie on its own, smaller file system (a mount under the home)
    space = fullest([*storage_paths(settings), *([Path(os.fsdecode(failed)).parent] if failed else [])])
    path = failed or (space.path if space else settings.home)
    detail = "" if isinstance(found, OSError) else f" ({found})"  # SQLite's words
    where = f"{space.path} has {size(space.free)} free of {size(space.total)}" if space else "free space unknown"
    return Fault(
        "disk-full",
        f"No space left on device (ENOSPC) writing {path}{detail}: {where}. Free space there, or move STEELQC_HOME "
        f"or the setting artifacts_destination to a larger disk, then {then}.",
        str(path),
    )


def storage_paths(settings: Settings) -> list[Path]:
    """Where steelqc writes: STEELQC_HOME, its run folders and image cache, a local MLflow store's artifacts (or
    the local artifacts_destination), the temporary folder."""
    paths = [settings.home, settings.runs_dir, settings.cache.root(settings.home), Path(tempfile.gettempdir())]
    if not settings.mlflow_uri.startswith(("http://", "https://")):
        paths.append(settings.artifact_root)
    if settings.artifacts_destination and "://" not in settings.artifacts_destination:
        paths.append(Path(settings.artifacts_destination))
    return paths
