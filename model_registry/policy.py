"""The promotion policy, as pure functions: what happens to a registered version, and when an alias move that
was decided against one champion must be refused because the champion moved meanwhile.

Nothing here talks to MLflow: :func:`model_registry.promotion.promote` carries out a :class:`PromotionDecision`
through the one locked, audited alias move, and every move that was decided against the alias's earlier version
(auto promotion, approval, rollback, repackaging) passes :func:`unchanged` as its check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from steelqc.model_registry.gates import Verdict

CHAMPION, CHALLENGER = "champion", "challenger"
AUTO, MANUAL = "auto", "manual"
APPROVAL_POLICIES = (AUTO, MANUAL)
GATES_PASSED = "all gates passed"
GATES_PASSED_TAG = "gates_passed"  # version tag, "true" or "false": only a version whose gates passed gets an alias


@dataclass(frozen=True)
class PromotionDecision:
    """What to do with a registered version: point ``challenger`` at it; point ``champion`` at it now (policy
    auto); or wait for an ML lead (``pending``, policy manual). ``reason`` is what the run reports, ``audit_reason``
    what the audit trail records for the move (or for not moving)."""

    challenger: bool
    champion: bool
    pending: bool
    reason: str
    audit_reason: str


@dataclass(frozen=True)
class PromotionOutcome:
    """What became of the version: ``promoted`` (it is champion now), why, and whether it awaits approval."""

    promoted: bool
    reason: str
    pending: bool = False


def decide_promotion(verdict: Verdict, approval: str, champion_before: str | None) -> PromotionDecision:
    """The promotion policy. Failed (or refused) gates: nothing moves. Passed: ``challenger``, then under policy
    ``auto`` ``champion`` too (against ``champion_before``, the champion the gates compared with: see
    :func:`unchanged`), under ``manual`` an ML lead decides."""
    if approval not in APPROVAL_POLICIES:
        raise ValueError(f"approval policy must be one of {APPROVAL_POLICIES}, not {approval!r}")
    if not verdict.passed:
        return PromotionDecision(False, False, False, verdict.reason, verdict.reason)
    if approval == MANUAL:
        waiting = f"approval policy {approval}: awaiting approval"
        return PromotionDecision(True, False, True, waiting, waiting)
    compared = f", not worse than champion v{champion_before}" if champion_before else ", first champion"
    return PromotionDecision(True, True, False, GATES_PASSED, f"auto: {GATES_PASSED}{compared}")


def unchanged(
    seen: str | None, *, alias: str = CHAMPION, during: str = "meanwhile", then: str | None = None
) -> Callable[[str | None], str | None]:
    """The "champion moved while we waited" rule, as a :func:`model_registry.promotion.move_alias` check: the move
    was decided against ``alias`` at version ``seen`` (None: no such alias yet), so it is refused when the alias
    points elsewhere by the time the lock is held. The check returns None (go ahead) or the refusal."""

    def check(now: str | None) -> str | None:
        if now == seen:
            return None
        return f"{alias} changed from {seen} to {now} {during}" + (f"; {then}" if then else "")

    return check
