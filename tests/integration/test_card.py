"""The model card against a real MLflow store: `steelqc train --profile tiny` leaves `card/model_card.md` on the new
version with the run's figures and its promotion in the approval record; a card is re-rendered with the audit trail
as it is now and with the exported formats."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from steelqc.model_registry import card, promotion
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings
from tests.helpers import Champion


def _card_text(mlflow_client: MlflowClient, run_id: str) -> str:
    path = mlflow_client.download_artifacts(run_id, f"{card.CARD_DIR}/{card.CARD_FILE}")
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_train_leaves_a_card_matching_the_run(champion: Champion, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only on the session champion (trained by `steelqc train --profile tiny`)."""
    monkeypatch.setenv("STEELQC_HOME", str(champion.home))
    settings = Settings()
    configure(settings)
    mlflow_client = client(settings)
    summary = champion.summary
    version = mlflow_client.get_model_version(settings.registered_model, summary["model_version"])
    assert version.tags.get(card.CARD_TAG) == card.card_uri(summary["run_id"]) == summary["model_card"]
    text = _card_text(mlflow_client, version.run_id)

    logged = mlflow_client.get_run(version.run_id).data.metrics
    assert f"Macro-F1 {logged['test_macro_f1']:.4f}" in text
    for name, figures in summary["metrics"]["per_class"].items():
        row = [name] + [f"{logged[f'test_{name}_{k}']:.4f}" if figures[k] is not None else "—" for k in
                        ("precision", "recall", "f1")]  # fmt: skip
        assert "| " + " | ".join(row) + f" | {int(logged[f'test_{name}_support'])} |" in text, name
    assert f"recall {logged['test_critical_recall']:.4f}" in text
    assert f"**{float(version.tags['threshold']):.4f}**" in text and f"**{version.tags['critical_class']}**" in text
    for gate in summary["gates"]:
        assert f"| {gate} |" in text
    assert f"`{summary['data']['fingerprint']}`" in text
    assert "| promote | champion |" in text  # the auto promotion, in the approval record


def test_card_is_rendered_again_with_the_audit_and_exports(store: tuple[Settings, MlflowClient]) -> None:
    settings, mlflow_client = store
    name = settings.registered_model
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run() as run:
        mlflow.log_text("weights", "model/weights.txt")
    promotion.ensure_registered_model(mlflow_client, name)
    version = mlflow_client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version
    facts = {
        "model": {"architecture": "tiny", "critical_class": "defect_3", "threshold": 0.25},
        "data": {"valid": 10, "quarantined": 0, "fingerprint": "fp", "by_class": {"ok": 5, "defect_3": 5}},
        "metrics": {"macro_f1": 0.5, "per_class": {"ok": {"f1": 0.5, "support": 2}}},
        "gates": {"macro_f1": {"value": 0.5, "threshold": 0.7, "passed": False}},
        "verdict": {"passed": False, "refused": False, "reason": "macro_f1 below 0.7"},
    }
    assert card.refresh_card(mlflow_client, name, version, exports={}) is None  # no card yet
    uri = card.write_card(mlflow_client, name, version, facts)
    assert uri == f"runs:/{run.info.run_id}/card/model_card.md"
    first = _card_text(mlflow_client, run.info.run_id)
    assert "| macro_f1 | 0.5000 | 0.7000 | **FAILED** |" in first and "No registry decision" in first
    assert "class **ok** has only 2 test images" in first

    promotion.record_decision(
        mlflow_client, name, action="reject", alias="champion", from_version=None, to_version=version,
        reason="rejected by lead: thin data", actor="lead",
    )  # fmt: skip
    exports = {"recommended": "onnx", "latency": {"onnx": {"p50_ms": 3.5, "p95_ms": 4.0}}, "int8": {"reason": "off"}}
    assert card.refresh_card(mlflow_client, name, version, exports=exports) == uri
    again = _card_text(mlflow_client, run.info.run_id)
    assert "| reject | champion | — → 1 | lead | rejected by lead: thin data |" in again
    assert "| onnx | 3.5000 | 4.0000 |" in again and "Not exported yet" not in again
    assert "| macro_f1 | 0.5000 | 0.7000 | **FAILED** |" in again  # the stored facts were kept
