"""Each gate passes and fails on its threshold; thin critical support refuses to gate; champion comparison."""

from __future__ import annotations

import copy

import pytest

from steelqc.model_registry.gates import GATE_NAMES, evaluate_gates
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
    assert result["passed"] and not result["refused"] and result["reason"] == "all gates passed"
    assert set(GATE_NAMES) <= set(result)
    assert result["champion"]["passed"] and result["champion"]["value"] is None


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
    assert not failed["passed"] and not failed[gate]["passed"] and gate in failed["reason"]
    others = [g for g in GATE_NAMES if g != gate]
    assert all(failed[g]["passed"] for g in others)
    at = evaluate_gates(metrics(**threshold_side), GATES, "crack")
    assert at[gate]["passed"] and at["passed"]


def test_missing_metric_fails_its_gate() -> None:
    result = evaluate_gates(metrics(critical_precision=None), GATES, "crack")
    assert not result["critical_precision"]["passed"]


def test_low_support_fails_and_thin_critical_support_refuses() -> None:
    per_class = {n: {"support": 20} for n in ("ok", "crack", "scratch", "dent", "other")}
    per_class["scratch"] = {"support": 2}
    result = evaluate_gates(metrics(per_class=per_class), GATES, "crack")
    assert not result["min_support"]["passed"] and result["min_support"]["below"] == {"scratch": 2}
    assert not result["refused"] and not result["passed"]
    per_class["crack"] = {"support": 4}
    refused = evaluate_gates(metrics(per_class=copy.deepcopy(per_class)), GATES, "crack")
    assert refused["refused"] and not refused["passed"] and "refused to gate" in refused["reason"]


def test_champion_comparison() -> None:
    champ = {"version": "3", "comparable": True, "macro_f1": 0.903, "critical_recall": 0.97}
    assert evaluate_gates(metrics(), GATES, "crack", champ)["champion"]["passed"]  # within 0.005
    worse = evaluate_gates(metrics(macro_f1=0.897), GATES, "crack", champ)
    assert not worse["champion"]["passed"] and worse["champion"]["champion_version"] == "3"
    lower_recall = evaluate_gates(metrics(critical_recall=0.96), GATES, "crack", champ)
    assert not lower_recall["champion"]["passed"]


def test_champion_with_other_label_space_is_not_comparable() -> None:
    champ = {"version": "1", "comparable": False, "reason": "different class map"}
    result = evaluate_gates(metrics(), GATES, "crack", champ)
    assert not result["champion"]["passed"] and result["champion"]["comparable"] is False
    assert "different class map" in result["champion"]["reason"]
