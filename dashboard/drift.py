"""What the dashboard's *Monitoring* page reads: the drift monitor's recent decisions with their figures
(:func:`steelqc.monitoring.monitor.history`) and each run's Evidently report (the ``drift_report.html`` artifact).

Read-only plain functions over the tracking store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from steelqc.monitoring.monitor import REPORT_FILE, history
from steelqc.tasks.config import Settings

log = logging.getLogger(__name__)

COLUMNS = (
    "time", "decision", "reason", "model_version", "n_images", "quarantined", "drifted_share", "embedding_drift",
    "confidence_drop", "novel", "retrain_flow_run_id", "monitoring_run_id",
)  # fmt: skip


def decisions(settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    """The latest ``limit`` monitoring decisions, newest first, as table rows (figures rounded for people)."""
    rows = []
    for record in history(settings, limit=limit):
        row = {key: record.get(key) for key in COLUMNS}
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = round(value, 4)
        rows.append(row)
    return rows


def report_html(mlflow_client: MlflowClient, run_id: str, into: Path) -> str | None:
    """The Evidently report of monitoring run ``run_id`` as HTML text, or None when the run logged none."""
    try:
        names = [a.path for a in mlflow_client.list_artifacts(run_id) if not a.is_dir]
        if REPORT_FILE not in names:
            return None
        local = mlflow_client.download_artifacts(run_id, REPORT_FILE, str(into))
    except MlflowException as exc:
        log.warning("cannot read the report of monitoring run %s: %s", run_id, exc)
        return None
    return Path(local).read_text(encoding="utf-8", errors="replace")
