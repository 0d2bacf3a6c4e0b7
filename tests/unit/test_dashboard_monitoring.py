"""The dashboard's *Monitoring* data on a real tracking store: the drift monitor's decisions, newest first, with
their figures, and a run's Evidently report (none when the run logged none)."""

from __future__ import annotations

import time
from pathlib import Path

from steelqc.dashboard import drift
from steelqc.model_registry.store import client, configure
from steelqc.monitoring.monitor import REPORT_FILE, TAG_DECISION, TAG_REASON, TAG_VERSION, monitoring_experiment
from steelqc.tasks.config import Settings


def _monitoring_run(settings: Settings, decision: str, drifted: float, report: Path | None) -> str:
    mlflow_client = client(settings)
    run = mlflow_client.create_run(monitoring_experiment(mlflow_client, settings))
    run_id = run.info.run_id
    for key, value in {TAG_DECISION: decision, TAG_REASON: f"{decision}: test", TAG_VERSION: "3"}.items():
        mlflow_client.set_tag(run_id, key, value)
    mlflow_client.log_metric(run_id, "drifted_share", drifted)
    mlflow_client.log_metric(run_id, "n_images", 40)
    if report is not None:
        mlflow_client.log_artifact(run_id, str(report))
    mlflow_client.set_terminated(run_id)
    return run_id


def test_decisions_newest_first_with_their_figures_and_report(tmp_path: Path) -> None:
    settings = Settings()
    configure(settings)
    assert drift.decisions(settings) == []
    report = tmp_path / REPORT_FILE
    report.write_text("<html><body>Evidently drift report: 3 of 6 features drifted</body></html>")
    quiet = _monitoring_run(settings, "no_drift", 0.0, None)
    time.sleep(0.01)
    drifted = _monitoring_run(settings, "retrain", 0.5, report)

    rows = drift.decisions(settings)
    assert [r["monitoring_run_id"] for r in rows] == [drifted, quiet]
    assert (rows[0]["decision"], rows[0]["drifted_share"], rows[0]["n_images"]) == ("retrain", 0.5, 40.0)
    assert rows[0]["model_version"] == "3" and rows[1]["decision"] == "no_drift"
    html = drift.report_html(client(settings), drifted, tmp_path / "got")
    assert html is not None and "3 of 6 features drifted" in html
    assert drift.report_html(client(settings), quiet, tmp_path / "none") is None


def test_live_table_of_the_latest_version_from_reviewed_records() -> None:
    settings = Settings()
    rows = [{"monitoring_run_id": "r2", "model_version": "4"}, {"monitoring_run_id": "r1", "model_version": "3"}]
    records = [
        {"sha256": "a", "reviewed_as": "crack", "predicted": "crack", "monitoring_run": "r2"},
        {"sha256": "b", "reviewed_as": "crack", "predicted": "ok", "monitoring_run": "r2"},
        {"sha256": "c", "reviewed_as": "ok", "predicted": "ok", "monitoring_run": "r2"},
        {"sha256": "d", "reviewed_as": "crack", "predicted": "ok", "monitoring_run": "r1"},  # version 3: not counted
    ]
    live = drift.live_table(settings, rows, records)
    assert live["model_version"] == "4" and live["n_reviewed"] == 3
    table = {row["class"]: row for row in live["table"]}
    assert len(table) == len(settings.class_names)
    assert (table["crack"]["precision"], table["crack"]["recall"], table["crack"]["support"]) == (1.0, 0.5, 2)
    assert (table["ok"]["precision"], table["ok"]["recall"], table["ok"]["support"]) == (0.5, 1.0, 1)
    assert [m["sha256"] for m in live["missed_critical"]] == ["b"]
    assert drift.live_table(settings, [], [])["n_reviewed"] == 0
    assert drift.live_table(settings, rows)["n_reviewed"] == 0  # an empty review queue
