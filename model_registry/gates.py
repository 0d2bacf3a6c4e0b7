"""Evaluation gates: a version may become `challenger` only when every gate passes.

Each gate reports ``value``, ``threshold`` and ``passed``. A gate is only as good as its sample: every class
needs a minimum test support; with too little critical-class support the run refuses to gate (``refused``)
rather than pass on noise. The champion comparison runs on the same test split; a champion with a different
label space is not comparable: the gate says so and leaves the decision to approval.
"""

from __future__ import annotations

from typing import Any

from steelqc.tasks.config import Gates

GATE_NAMES = ("min_support", "macro_f1", "critical_recall", "critical_precision", "glare_delta_f1", "champion")


def _gate(value: Any, threshold: Any, passed: bool, **extra: Any) -> dict:
    return {"value": value, "threshold": threshold, "passed": bool(passed), **extra}


def evaluate_gates(
    metrics: dict,
    gates: Gates,
    critical_class: str,
    champion: dict | None = None,
) -> dict:
    """Judge ``metrics`` (the evaluation contract) against ``gates``.

    ``champion``: None when there is no champion; else ``{"version", "comparable": bool, "reason",
    "macro_f1", "critical_recall"}`` measured on the same test split.
    Returns ``{gate: {...}, "passed": bool, "refused": bool, "reason": str}``.
    """
    per_class = metrics.get("per_class", {})
    supports = {name: (figures or {}).get("support") or 0 for name, figures in per_class.items()}
    low = {name: n for name, n in supports.items() if n < gates.min_test_support_per_class}
    critical_support = supports.get(critical_class, 0)
    refused = critical_support < gates.min_test_support_per_class
    result: dict[str, Any] = {
        "min_support": _gate(
            min(supports.values()) if supports else 0,
            gates.min_test_support_per_class,
            not low,
            below=low,
        ),
        "macro_f1": _ge(metrics.get("macro_f1"), gates.macro_f1_min),
        "critical_recall": _ge(metrics.get("critical_recall"), gates.critical_recall_min),
        "critical_precision": _ge(metrics.get("critical_precision"), gates.critical_precision_min),
        "glare_delta_f1": _le((metrics.get("glare") or {}).get("delta_f1"), gates.glare_delta_f1_max),
        "champion": champion_gate(metrics, champion, gates),
    }
    ci = metrics.get("confidence_intervals")
    if ci:
        result["macro_f1"]["ci95"] = ci.get("macro_f1")
        result["critical_recall"]["ci95"] = ci.get("critical_recall")
    passed = all(result[name]["passed"] for name in GATE_NAMES) and not refused
    failing = [name for name in GATE_NAMES if not result[name]["passed"]]
    if refused:
        reason = (
            f"refused to gate: {critical_support} test images of the critical class {critical_class!r}, "
            f"fewer than {gates.min_test_support_per_class}"
        )
    elif failing:
        reason = "failed: " + ", ".join(failing)
    else:
        reason = "all gates passed"
    result.update(passed=passed, refused=refused, reason=reason)
    return result


def _ge(value: float | None, threshold: float) -> dict:
    return _gate(value, threshold, value is not None and value >= threshold, rule=">=")


def _le(value: float | None, threshold: float) -> dict:
    return _gate(value, threshold, value is not None and value <= threshold, rule="<=")


def champion_gate(metrics: dict, champion: dict | None, gates: Gates) -> dict:
    """Not worse than the champion on the same test split: macro-F1 within tolerance, critical recall not lower."""
    threshold = {"macro_f1_tolerance": gates.champion_macro_f1_tolerance, "critical_recall": "not lower"}
    if champion is None:
        return _gate(None, threshold, True, champion_version=None, reason="no champion yet")
    if not champion.get("comparable", True):
        return _gate(
            None,
            threshold,
            False,
            champion_version=champion.get("version"),
            comparable=False,
            reason=champion.get("reason") or "champion has a different label space: not comparable; needs approval",
        )
    ours_f1, ours_recall = metrics.get("macro_f1"), metrics.get("critical_recall")
    champ_f1, champ_recall = champion.get("macro_f1"), champion.get("critical_recall")
    f1_ok = ours_f1 is not None and (champ_f1 is None or ours_f1 >= champ_f1 - gates.champion_macro_f1_tolerance)
    recall_ok = ours_recall is not None and (champ_recall is None or ours_recall >= champ_recall - 1e-12)
    return _gate(
        {"macro_f1": ours_f1, "critical_recall": ours_recall},
        threshold,
        f1_ok and recall_ok,
        champion_version=champion.get("version"),
        champion_macro_f1=champ_f1,
        champion_critical_recall=champ_recall,
        comparable=True,
    )
