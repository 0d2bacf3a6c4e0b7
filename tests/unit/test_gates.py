"""Each gate passes and fails on its threshold; thin critical support refuses to gate; champion comparison; the
report keeps the gates apart from the verdict."""

from __future__ import annotations

import copy

import pytest

from steelqc.model_registry.gates import GATE_NAMES, ChampionScore, Gate, GateReport, Verdict, evaluate_gates
from steelqc.tasks.config import Gates

GATES = Gates()


def metrics(**overrides) -> dict:
    base = {
        "macro_f1": 0.90,
        "critical_recall": 0.97,
        "critical_precision": 0.80,
        "glare": {"delta_f1": 0.01},
        "per_class": {name: {"support": 20} for name in ("ok", "crack", "scratch", "dent", "other")},
    }
    for key, value in overrides.items():
        base[key] = value
    return base


def test_all_pass() -> None:
    result = evaluate_gates(metrics(), GATES, "crack")
    assert result.verdict == Verdict(passed=True, refused=False, reason="all gates passed") and result.passed
    assert tuple(result.gates) == GATE_NAMES
    assert result.gates["champion"].passed and result.gates["champion"].value is None


def test_the_report_as_json_keeps_gates_apart_from_the_verdict() -> None:
    result = evaluate_gates(metrics(confidence_intervals={"macro_f1": [0.85, 0.95]}), GATES, "crack")
    out = result.to_dict()
    assert set(out) == {"gates", "verdict"} and set(out["gates"]) == set(GATE_NAMES)
    assert out["verdict"] == {"passed": True, "refused": False, "reason": "all gates passed"}
    for gate in out["gates"].values():
        assert {"value", "threshold", "passed"} <= set(gate) and "refused" not in gate
    assert out["gates"]["macro_f1"] == {
        "value": 0.90,
        "threshold": 0.80,
        "passed": True,
        "rule": ">=",
        "ci95": [0.85, 0.95],
    }
    assert result.gates_dict() == out["gates"]
    assert "ci95" not in out["gates"]["glare_delta_f1"], "metrics without the glare interval (older runs)"


def test_the_glare_gate_carries_its_paired_interval() -> None:
    cis = {"macro_f1": [0.85, 0.95], "critical_recall": [0.9, 1.0], "glare_delta_f1": [0.0, 0.025]}
    gates = evaluate_gates(metrics(confidence_intervals=cis), GATES, "crack").gates_dict()
    assert gates["glare_delta_f1"]["ci95"] == [0.0, 0.025] and gates["glare_delta_f1"]["rule"] == "<="
    assert gates["critical_recall"]["ci95"] == [0.9, 1.0]


def test_a_gate_is_value_threshold_passed_and_its_details() -> None:
    gate = Gate(0.5, 0.8, False, {"rule": ">="})
    assert gate.to_dict() == {"value": 0.5, "threshold": 0.8, "passed": False, "rule": ">="}
    report = GateReport({"macro_f1": gate}, Verdict(False, False, "failed: macro_f1"))
    assert not report.passed and report.reason == "failed: macro_f1"


@pytest.mark.parametrize(
    ("gate", "override", "threshold_side"),
    [
        ("macro_f1", {"macro_f1": 0.79}, {"macro_f1": 0.80}),
        ("critical_recall", {"critical_recall": 0.94}, {"critical_recall": 0.95}),
        ("critical_precision", {"critical_precision": 0.49}, {"critical_precision": 0.50}),
        ("glare_delta_f1", {"glare": {"delta_f1": 0.031}}, {"glare": {"delta_f1": 0.03}}),
    ],
)
def test_each_gate_fails_below_and_passes_at_its_threshold(gate: str, override: dict, threshold_side: dict) -> None:
    failed = evaluate_gates(metrics(**override), GATES, "crack")
    assert not failed.passed and not failed.gates[gate].passed and gate in failed.reason
    others = [g for g in GATE_NAMES if g != gate]
    assert all(failed.gates[g].passed for g in others)
    at = evaluate_gates(metrics(**threshold_side), GATES, "crack")
    assert at.gates[gate].passed and at.passed


def test_missing_metric_fails_its_gate() -> None:
    result = evaluate_gates(metrics(critical_precision=None), GATES, "crack")
    assert not result.gates["critical_precision"].passed and not result.passed


def test_low_support_fails_and_thin_critical_support_refuses() -> None:
    per_class = {n: {"support": 20} for n in ("ok", "crack", "scratch", "dent", "other")}
    per_class["scratch"] = {"support": 2}
    result = evaluate_gates(metrics(per_class=per_class), GATES, "crack")
    assert not result.gates["min_support"].passed and result.gates["min_support"].details["below"] == {"scratch": 2}
    assert not result.verdict.refused and not result.passed
    per_class["crack"] = {"support": 4}
    refused = evaluate_gates(metrics(per_class=copy.deepcopy(per_class)), GATES, "crack")
    assert refused.verdict.refused and not refused.passed and "refused to gate" in refused.reason


def test_champion_comparison() -> None:
    champ = ChampionScore("3", comparable=True, macro_f1=0.903, critical_recall=0.97)
    assert evaluate_gates(metrics(), GATES, "crack", champ).gates["champion"].passed  # within 0.005
    worse = evaluate_gates(metrics(macro_f1=0.897), GATES, "crack", champ)
    assert not worse.gates["champion"].passed and worse.gates["champion"].details["champion_version"] == "3"
    assert not worse.passed and worse.reason == "failed: champion"
    lower_recall = evaluate_gates(metrics(critical_recall=0.96), GATES, "crack", champ)
    assert not lower_recall.gates["champion"].passed


def test_champion_with_other_label_space_is_not_comparable() -> None:
    champ = ChampionScore("1", comparable=False, reason="different class map")
    result = evaluate_gates(metrics(), GATES, "crack", champ)
    gate = result.gates["champion"].to_dict()
    assert not gate["passed"] and gate["comparable"] is False and "different class map" in gate["reason"]
    assert champ.to_dict() == {"version": "1", "comparable": False, "reason": "different class map"}
