"""What the dashboard's *Monitoring* page reads: the drift monitor's recent decisions with their figures
(:func:`steelqc.monitoring.monitor.history`), each run's Evidently report (the ``drift_report.html`` artifact), and
the champion's live precision and recall from the reviewed labels (:func:`live_table`).

Read-only plain functions over the tracking store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from steelqc.monitoring.live_figures import live_figures
from steelqc.monitoring.monitor import REPORT_FILE, history
from steelqc.monitoring.review_labels import LabelDesk, LabelError
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


def reviewed_records(settings: Settings) -> list[dict[str, Any]]:
    """The reviewed records of the local review queue (none for an S3 queue, which labelling does not use)."""
    try:
        return list(LabelDesk.open(settings).done().values())
    except LabelError:
        return []


def _ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def live_table(
    settings: Settings, rows: Sequence[Mapping[str, Any]], records: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The live figures of the model version of the latest decision in ``rows`` (:func:`decisions`; a record's
    version is that of the monitoring run that queued it): ``model_version``, ``n_reviewed``, ``table`` (one row
    per class: precision, recall, support, predicted) and ``missed_critical``. ``records``: the reviewed records
    (default: :func:`reviewed_records`)."""
    run_versions = {str(r["monitoring_run_id"]): str(r["model_version"]) for r in rows if r.get("model_version")}
    version = next((str(r["model_version"]) for r in rows if r.get("model_version")), None)
    records = reviewed_records(settings) if records is None else records
    names = [name for _, name in sorted(settings.class_names.items())]
    figures = live_figures(records, names, settings.critical_class, version, run_versions)
    table = [{**row, "precision": _ratio(row["precision"]), "recall": _ratio(row["recall"])}
             for row in figures["classes"]]  # fmt: skip
    return {**figures, "table": table}
