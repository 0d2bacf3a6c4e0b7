"""Evaluation gates: a version may become `challenger` only when every gate passes.

Each gate reports ``value``, ``threshold`` and ``passed``. A gate is only as good as its sample: every class
needs a minimum test support; with too little critical-class support the run refuses to gate (``refused``)
rather than pass on noise. The champion comparison runs on the same test split; a champion with a different
label space is not comparable: the gate says so and leaves the decision to approval.

:func:`evaluate_gates` returns a :class:`GateReport`: the gates by name (each ``value``, ``threshold``, ``passed``
and its details) and, apart from them, the :class:`Verdict` (``passed``, ``refused``, ``reason``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from steelqc.tasks.config import Gates

GATE_NAMES = (
    "min_support",
    "macro_f1",
    "critical_recall",
    "critical_precision",
    "glare_delta_f1",
    "source_macro_f1",
    "champion",
)


@dataclass
class Gate:
    """One gate: the measured ``value``, its ``threshold``, whether it ``passed``, and its own ``details`` (the
    rule, a 95 % interval, the classes below the minimum support, the champion's figures...)."""

    value: Any
    threshold: Any
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{value, threshold, passed, ...details}``: the gate as the ``--json`` output and the version tag show it."""
        return {"value": self.value, "threshold": self.threshold, "passed": self.passed, **self.details}


@dataclass(frozen=True)
class Verdict:
    """The overall verdict: ``passed`` (every gate passed and the run did not refuse to gate), ``refused`` (too
    few critical test images to judge), and why."""

    passed: bool
    refused: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateReport:
    """Every gate by name, and the verdict over them."""

    gates: dict[str, Gate]
    verdict: Verdict

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def reason(self) -> str:
        return self.verdict.reason

    def gates_dict(self) -> dict[str, dict[str, Any]]:
        """``{gate: {value, threshold, passed, ...}}``: the ``gates`` of the ``--json`` output."""
        return {name: gate.to_dict() for name, gate in self.gates.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"gates": self.gates_dict(), "verdict": self.verdict.to_dict()}


@dataclass
class ChampionScore:
    """The current champion re-scored on this run's test split (``comparable`` False, with the ``reason``, when
    its label space differs: then there are no figures)."""

    version: str
    comparable: bool
    macro_f1: float | None = None
    critical_recall: float | None = None
    critical_precision: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``champion_before`` of the ``--json`` output."""
        if not self.comparable:
            return {"version": self.version, "comparable": False, "reason": self.reason}
        return {
            "version": self.version,
            "comparable": True,
            "macro_f1": self.macro_f1,
            "critical_recall": self.critical_recall,
            "critical_precision": self.critical_precision,
        }


def _gate(value: Any, threshold: Any, passed: bool, **details: Any) -> Gate:
    return Gate(value, threshold, bool(passed), details)


def evaluate_gates(
    metrics: dict,
    gates: Gates,
    critical_class: str,
    champion: ChampionScore | None = None,
) -> GateReport:
    """Judge ``metrics`` (the evaluation contract) against ``gates``.

    ``champion``: None when there is no champion; else its figures on the same test split.
    """
    per_class = metrics.get("per_class", {})
    supports = {name: (figures or {}).get("support") or 0 for name, figures in per_class.items()}
    low = {name: n for name, n in supports.items() if n < gates.min_test_support_per_class}
    critical_support = supports.get(critical_class, 0)
    refused = critical_support < gates.min_test_support_per_class
    result: dict[str, Gate] = {
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
        "source_macro_f1": source_gate(metrics.get("per_source") or {}, gates),
        "champion": champion_gate(metrics, champion, gates),
    }
    ci = metrics.get("confidence_intervals")
    if ci:
        result["macro_f1"].details["ci95"] = ci.get("macro_f1")
        result["critical_recall"].details["ci95"] = ci.get("critical_recall")
        if "glare_delta_f1" in ci:  # paired bootstrap of ΔF1; absent from metrics written before it existed
            result["glare_delta_f1"].details["ci95"] = ci["glare_delta_f1"]
    failing = [name for name in GATE_NAMES if not result[name].passed]
    if refused:
        reason = (
            f"refused to gate: {critical_support} test images of the critical class {critical_class!r}, "
            f"fewer than {gates.min_test_support_per_class}"
        )
    elif failing:
        reason = "failed: " + ", ".join(failing)
    else:
        reason = "all gates passed"
    return GateReport(result, Verdict(passed=not failing and not refused, refused=refused, reason=reason))


def _ge(value: float | None, threshold: float) -> Gate:
    return _gate(value, threshold, value is not None and value >= threshold, rule=">=")


def _le(value: float | None, threshold: float) -> Gate:
    return _gate(value, threshold, value is not None and value <= threshold, rule="<=")


def source_gate(per_source: dict[str, dict], gates: Gates) -> Gate:
    """Every data source's own macro-F1 at least ``min_source_macro_f1`` (fairness across plants).

    Judged with several sources only (one source is the whole test set: the ``macro_f1`` gate judges it). A source
    with fewer than ``min_test_support_per_class`` test images in any class it holds is reported under
    ``not_judged`` (with its thinnest class), not judged. ``value`` is the lowest judged macro-F1 (None when none is
    judged); ``below`` lists the judged sources under the floor; ``per_source`` every source's macro-F1.
    """
    threshold, floor = gates.min_source_macro_f1, gates.min_test_support_per_class
    figures = {name: f.get("macro_f1") for name, f in per_source.items()}
    if len(per_source) < 2:
        return _gate(
            None, threshold, True, rule=">=", per_source=figures, reason="one source: the macro_f1 gate judges it"
        )
    judged, not_judged = {}, {}
    for name, f in per_source.items():
        support = f.get("support") or {}
        thin = {c: n for c, n in support.items() if n < floor}
        if not support:
            not_judged[name] = "no test images"
        elif thin:
            not_judged[name] = f"fewer than {floor} test images of {', '.join(f'{c} ({n})' for c, n in thin.items())}"
        else:
            judged[name] = f.get("macro_f1")
    below = {name: v for name, v in judged.items() if v is None or v < threshold}
    value = min((v for v in judged.values() if v is not None), default=None)
    return _gate(value, threshold, not below, rule=">=", per_source=figures, below=below, not_judged=not_judged)


def champion_gate(metrics: dict, champion: ChampionScore | None, gates: Gates) -> Gate:
    """Not worse than the champion on the same test split: macro-F1 within tolerance, critical recall not lower."""
    threshold = {"macro_f1_tolerance": gates.champion_macro_f1_tolerance, "critical_recall": "not lower"}
    if champion is None:
        return _gate(None, threshold, True, champion_version=None, reason="no champion yet")
    if not champion.comparable:
        return _gate(
            None,
            threshold,
            False,
            champion_version=champion.version,
            comparable=False,
            reason=champion.reason or "champion has a different label space: not comparable; needs approval",
        )
    ours_f1, ours_recall = metrics.get("macro_f1"), metrics.get("critical_recall")
    champ_f1, champ_recall = champion.macro_f1, champion.critical_recall
    f1_ok = ours_f1 is not None and (champ_f1 is None or ours_f1 >= champ_f1 - gates.champion_macro_f1_tolerance)
    recall_ok = ours_recall is not None and (champ_recall is None or ours_recall >= champ_recall - 1e-12)
    return _gate(
        {"macro_f1": ours_f1, "critical_recall": ours_recall},
        threshold,
        f1_ok and recall_ok,
        champion_version=champion.version,
        champion_macro_f1=champ_f1,
        champion_critical_recall=champ_recall,
        comparable=True,
    )
