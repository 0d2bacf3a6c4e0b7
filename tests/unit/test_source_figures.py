"""Figures per data source (tasks/evaluation/metrics.per_source) and the source_macro_f1 gate, as pure functions."""

from __future__ import annotations

import numpy as np

from steelqc.model_registry.gates import evaluate_gates, source_gate
from steelqc.tasks.config import Gates
from steelqc.tasks.evaluation.metrics import compute_metrics, per_source

NAMES = ["ok", "crack", "dent"]


def one_hot(labels: list[int]) -> np.ndarray:
    return np.eye(len(NAMES))[labels]


def test_each_source_is_scored_on_its_own_images() -> None:
    y_true = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
    y_pred = np.array([0, 1, 2, 0, 1, 2, 2, 0, 2, 1])  # plant-b gets two wrong
    sources = ["a"] * 6 + ["b"] * 4
    figures = per_source(y_true, y_pred, sources, NAMES, 1, held_classes={"a": ["ok", "crack", "dent"]}, n_boot=200)
    assert set(figures) == {"a", "b"}
    a, b = figures["a"], figures["b"]
    assert a["n"] == 6 and a["macro_f1"] == 1.0 and a["critical_recall"] == 1.0
    assert a["support"] == {"ok": 2, "crack": 2, "dent": 2}
    whole_b = compute_metrics(y_true[6:], one_hot(y_pred[6:].tolist()), NAMES, 1)
    assert b["macro_f1"] == whole_b["macro_f1"] and b["critical_recall"] == 0.5
    assert b["support"] == {"ok": 1, "crack": 2, "dent": 1}
    lo, hi = b["confidence_intervals"]["macro_f1"]
    assert lo is not None and lo <= b["macro_f1"] <= hi


def test_a_held_class_without_test_images_shows_zero_support() -> None:
    figures = per_source(np.array([1, 1]), np.array([1, 1]), ["a", "a"], NAMES, 1, {"a": ["crack", "dent"]}, n_boot=50)
    assert figures["a"]["support"] == {"crack": 2, "dent": 0}


def source(macro_f1: float, support: dict[str, int]) -> dict:
    return {"macro_f1": macro_f1, "support": support, "n": sum(support.values())}


def test_the_gate_fails_when_one_source_is_below_its_floor() -> None:
    gates = Gates(min_source_macro_f1=0.7, min_test_support_per_class=2)
    gate = source_gate({"a": source(0.9, {"ok": 3, "crack": 3}), "b": source(0.5, {"ok": 2, "crack": 2})}, gates)
    assert not gate.passed and gate.value == 0.5 and gate.threshold == 0.7
    assert gate.details["below"] == {"b": 0.5} and gate.details["per_source"] == {"a": 0.9, "b": 0.5}


def test_the_gate_passes_when_every_source_meets_the_floor() -> None:
    gates = Gates(min_source_macro_f1=0.7, min_test_support_per_class=2)
    gate = source_gate({"a": source(0.9, {"ok": 3}), "b": source(0.7, {"ok": 2, "crack": 2})}, gates)
    assert gate.passed and gate.value == 0.7 and gate.details["below"] == {}


def test_a_thin_source_is_reported_not_judged() -> None:
    gates = Gates(min_source_macro_f1=0.7, min_test_support_per_class=2)
    gate = source_gate({"a": source(0.9, {"ok": 3, "crack": 3}), "b": source(0.1, {"ok": 5, "crack": 1})}, gates)
    assert gate.passed and gate.value == 0.9
    assert gate.details["not_judged"] == {"b": "fewer than 2 test images of crack (1)"}
    assert gate.details["per_source"]["b"] == 0.1  # still reported


def test_one_source_is_left_to_the_macro_f1_gate() -> None:
    gate = source_gate({"a": source(0.1, {"ok": 9, "crack": 9})}, Gates())
    assert gate.passed and gate.value is None


def test_the_verdict_names_the_source_gate() -> None:
    per_class = {n: {"support": 10} for n in NAMES}
    metrics = {
        "per_class": per_class,
        "macro_f1": 0.9,
        "critical_recall": 1.0,
        "critical_precision": 1.0,
        "glare": {"delta_f1": 0.0},
        "per_source": {"a": source(0.95, {"ok": 5, "crack": 5}), "b": source(0.6, {"ok": 5, "crack": 5})},
    }
    report = evaluate_gates(metrics, Gates(min_source_macro_f1=0.7), "crack")
    assert not report.passed and report.reason == "failed: source_macro_f1"
    assert report.gates_dict()["source_macro_f1"]["below"] == {"b": 0.6}


def test_the_approval_request_and_the_training_report_show_each_source() -> None:
    from rich.console import Console  # noqa: PLC0415

    from steelqc.flows.approval import source_rows  # noqa: PLC0415
    from steelqc.flows.summary import training_report  # noqa: PLC0415

    figures = per_source(
        np.array([0, 1, 2, 0, 1, 2, 0, 1]), np.array([0, 1, 2, 0, 1, 2, 2, 0]), ["a"] * 6 + ["b"] * 2, NAMES, 1,
        n_boot=50,
    )  # fmt: skip
    rows = source_rows({"per_source": figures})
    assert rows[1].startswith("| source |") and any(r.startswith("| b | 2 | 0.0000 |") for r in rows)
    assert source_rows({"per_source": {"a": figures["a"]}}) == []  # one source: the headline figures say it all
    console = Console(record=True, width=160)
    console.print(training_report({"metrics": {"per_source": figures}, "model_version": "1"}))
    text = console.export_text()
    assert "macro-F1" in text and "b " in text and "ok 1, crack 1" in text
