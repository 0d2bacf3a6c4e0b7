"""The model card's text (model_registry.card.render_card) on fixed figures: every section, limits from the figures,
failed gates shown as failed, the approval record and the exported formats."""

from __future__ import annotations

from steelqc.model_registry.card import data_sources, known_limits, render_card, version_events

MODEL = {
    "name": "steel-defect-classifier",
    "version": "3",
    "run_id": "abc123",
    "architecture": "resnet18",
    "critical_class": "defect_3",
    "threshold": 0.3125,
    "code_version": "deadbeef",
}
DATA = {
    "valid": 300,
    "quarantined": 2,
    "fingerprint": "f1ng3rpr1nt",
    "by_class": {"ok": 100, "defect_1": 50, "defect_3": 150},
}
METRICS = {
    "macro_f1": 0.8123,
    "accuracy": 0.85,
    "roc_auc_macro": 0.93,
    "critical_recall": 0.95,
    "critical_precision": 0.7,
    "per_class": {
        "ok": {"precision": 0.9, "recall": 0.8, "f1": 0.847, "support": 30},
        "defect_1": {"precision": 0.5, "recall": 0.6, "f1": 0.5454, "support": 4},
        "defect_3": {"precision": 0.7, "recall": 0.95, "f1": 0.806, "support": 40},
    },
    "confidence_intervals": {
        "macro_f1": [0.75, 0.86],
        "critical_recall": [0.6, 0.99],
        "glare_delta_f1": [0.01, 0.09],
    },
    "glare": {"f1_clean": 0.8123, "f1_dim": 0.74, "f1_bright": 0.8, "delta_f1": 0.0723, "delta_f1_dim_bright": 0.06},
    "calibration": {"threshold": 0.3125, "target_recall": 0.95},
}
GATES = {
    "min_support": {"value": 4, "threshold": 10, "passed": False},
    "macro_f1": {"value": 0.8123, "threshold": 0.7, "passed": True},
    "critical_recall": {"value": 0.95, "threshold": 0.9, "passed": True},
}
VERDICT = {"passed": False, "refused": False, "reason": "min_support failed: defect_1 has 4 test images"}


def test_every_section_and_figure_is_there() -> None:
    card = render_card(MODEL, DATA, METRICS, GATES, VERDICT)
    for heading in (
        "# Model card: steel-defect-classifier v3",
        "## Intended use",
        "## Not for",
        "## Data",
        "## Figures on the test split",
        "## Glare",
        "## Critical class",
        "## Gates",
        "## Known limits",
        "## Approval record",
        "## Exported formats",
    ):
        assert heading in card, heading
    assert "256×1600" in card and "only safety control" in card and "f1ng3rpr1nt" in card
    assert "| defect_1 | 0.5000 | 0.6000 | 0.5454 | 4 |" in card
    assert "0.7500–0.8600" in card  # macro-F1 interval
    assert "ΔF1 (largest drop from clean) 0.0723 (95 % CI 0.0100–0.0900)" in card
    assert "**defect_3**" in card and "**0.3125**" in card and "recall 0.9500" in card and "precision 0.7000" in card
    assert "| data | — | 300 | 2 | ok 100, defect_1 50, defect_3 150 |" in card  # the single source
    assert "Not exported yet" in card and "No registry decision" in card


def test_a_failed_gate_is_shown_failed() -> None:
    card = render_card(MODEL, DATA, METRICS, GATES, VERDICT)
    assert "| min_support | 4 | 10 | **FAILED** |" in card
    assert "| macro_f1 | 0.8123 | 0.7000 | passed |" in card
    assert "Verdict: **failed** — min_support failed" in card


def test_limits_come_from_the_figures() -> None:
    limits = known_limits(METRICS, GATES, DATA)
    assert any("**defect_1** has only 4 test images" in line for line in limits)
    assert not any("**ok**" in line or "**defect_3**" in line for line in limits)
    assert any("critical_recall is wide" in line for line in limits)
    assert not any("macro_f1 is wide" in line for line in limits)
    assert any("drops by 0.0723 under glare" in line for line in limits)
    assert any("single data source" in line for line in limits)
    assert "- class **defect_1** has only 4 test images" in render_card(MODEL, DATA, METRICS, GATES, VERDICT)


def test_sources_not_judged_and_per_source_figures() -> None:
    sources = {
        "plant_a": {"format": "severstal", "valid": 200, "quarantined": 1, "by_class": {"ok": 80, "defect_3": 120}},
        "plant_b": {"format": "folders", "valid": 100, "quarantined": 1, "by_class": {"ok": 20, "defect_1": 50}},
    }
    data = {**DATA, "sources": sources}
    metrics = {
        **METRICS,
        "per_source": {
            "plant_a": {"n": 50, "macro_f1": 0.83, "critical_recall": 0.95, "support": {"ok": 20, "defect_3": 30},
                        "confidence_intervals": {"macro_f1": [0.7, 0.9], "critical_recall": [0.8, 1.0]}},
            "plant_b": {"n": 24, "macro_f1": 0.6, "critical_recall": None, "support": {"ok": 20, "defect_1": 4},
                        "confidence_intervals": {"macro_f1": [0.4, 0.8], "critical_recall": [None, None]}},
        },
    }  # fmt: skip
    not_judged = {"plant_b": "fewer than 10 test images of defect_1 (4)"}
    gates = {**GATES, "source_macro_f1": {"value": 0.83, "threshold": 0.5, "passed": True, "not_judged": not_judged}}
    card = render_card(MODEL, data, metrics, gates, VERDICT)
    assert set(data_sources(data)) == {"plant_a", "plant_b"}
    assert "| plant_b | folders | 100 | 1 | ok 20, defect_1 50 |" in card
    assert "| plant_a | 50 | 0.8300 | 0.7000–0.9000 | 0.9500 | 0.8000–1.0000 | ok 20, defect_3 30 |" in card
    assert "source **plant_b** was not judged: fewer than 10 test images of defect_1 (4)" in card
    assert "single data source" not in card


def test_approval_record_and_exports() -> None:
    events = [
        {"seq": 1, "time": "2024-05-01T10:00:00", "action": "promote", "alias": "challenger", "from_version": None,
         "to_version": "3", "actor": "ci@host", "reason": "gates passed"},
        {"seq": 2, "time": "2024-05-01T11:00:00", "action": "approve", "alias": "champion", "from_version": "2",
         "to_version": "3", "actor": "lead", "reason": "approved by lead: looks good"},
        {"seq": 3, "time": "2024-05-01T12:00:00", "action": "promote", "alias": "challenger", "from_version": None,
         "to_version": "4", "actor": "ci@host", "reason": "gates passed"},
    ]  # fmt: skip
    mine = version_events(events, "3")
    assert [e["seq"] for e in mine] == [1, 2]
    exports = {
        "recommended": "onnx",
        "latency": {"onnx": {"p50_ms": 12.5, "p95_ms": 15.0}, "openvino": {"p50_ms": 9.25, "p95_ms": 11.0}},
        "parity": {"onnx": {"max_abs_diff": 1e-6}, "openvino": {"max_abs_diff": 2e-6}},
        "int8": {"reason": "INT8 lost 0.02 macro-F1: not published"},
        "logged": "runs:/abc123/export",
    }
    card = render_card(MODEL, DATA, METRICS, GATES, VERDICT, mine, exports)
    assert "| 2024-05-01T11:00:00 | approve | champion | 2 → 3 | lead | approved by lead: looks good |" in card
    assert "| onnx | 12.5000 | 15.0000 |" in card and "| openvino | 9.2500 |" in card
    assert "Recommended: **onnx**" in card and "not published" in card and "Not exported yet" not in card
