"""An ML lead's decision on a challenger: approve (moves ``champion``), reject, or time out.

Every outcome lands in the audit trail with the reviewer, the comment and the Prefect flow run. Approval goes
through :func:`model_registry.promotion.move_alias` (the one locked, audited alias move). The reviewer must not be
the identity that started the run: such a decision is refused and the refusal is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from mlflow import MlflowClient

from steelqc.model_registry import policy, promotion


class ReviewerRefused(promotion.PromotionRefused):
    """This reviewer may not decide (self-approval, or no name): another reviewer can."""


def same_identity(reviewer: str, started_by: str) -> bool:
    """True when ``reviewer`` names whoever started the run (``user`` matches ``user@host``; case-insensitive)."""
    a, b = reviewer.strip().lower(), started_by.strip().lower()
    return bool(a) and (a == b or a == b.split("@")[0] or a.split("@")[0] == b)


def _self_check(reviewer: str, started_by: str) -> str | None:
    if not reviewer.strip():
        return "a reviewer name is required"
    if same_identity(reviewer, started_by):
        return f"self-approval refused: reviewer {reviewer!r} started this run ({started_by})"
    return None


def approve(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    reviewer: str,
    started_by: str,
    seen_champion: str | None,
    comment: str = "",
    run_id: str | None = None,
    flow_run_id: str | None = None,
    timeout_s: float = 120.0,
) -> dict:
    """Point ``champion`` at ``version`` on the reviewer's word (refused: self-approval, champion moved meanwhile,
    gates not passed). Returns the audit event."""
    extra = {"comment": comment, "flow_run_id": flow_run_id, "started_by": started_by}
    refusal = _self_check(reviewer, started_by)
    moved = policy.unchanged(seen_champion, during="while awaiting approval", then="re-run to compare")

    def check(now: str | None) -> str | None:
        return refusal or moved(now)

    try:
        return promotion.move_alias(
            client,
            name,
            promotion.CHAMPION,
            version,
            action="approve",
            reason=f"approved by {reviewer}" + (f": {comment}" if comment else ""),
            who=reviewer,
            run_id=run_id,
            check=check,
            timeout_s=timeout_s,
            extra=extra,
        )
    except promotion.PromotionRefused as exc:
        if refusal:  # the check refuses the reviewer first, before it looks at the champion
            raise ReviewerRefused(str(exc)) from exc
        raise


def reject(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    reviewer: str,
    started_by: str,
    comment: str = "",
    run_id: str | None = None,
    flow_run_id: str | None = None,
    timeout_s: float = 120.0,
) -> dict:
    """Record a rejection (the champion is untouched). A self-rejection is refused and recorded like approval."""
    extra = {"comment": comment, "flow_run_id": flow_run_id, "started_by": started_by}
    champion = promotion.alias_version(client, name, promotion.CHAMPION)
    refusal = _self_check(reviewer, started_by)
    if refusal:
        promotion.record_decision(
            client, name, timeout_s, action="reject-refused", alias=promotion.CHAMPION, from_version=champion,
            to_version=version, reason=refusal, actor=reviewer, run_id=run_id, **extra,
        )  # fmt: skip
        raise ReviewerRefused(refusal)
    return promotion.record_decision(
        client, name, timeout_s, action="reject", alias=promotion.CHAMPION, from_version=champion,
        to_version=version, reason=f"rejected by {reviewer}" + (f": {comment}" if comment else ""),
        actor=reviewer, run_id=run_id, **extra,
    )  # fmt: skip


def timed_out(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    waited_s: float,
    started_by: str,
    run_id: str | None = None,
    flow_run_id: str | None = None,
    timeout_s: float = 120.0,
) -> dict:
    """Record that nobody decided in time (the champion is untouched)."""
    return promotion.record_decision(
        client, name, timeout_s, action="approval-timeout", alias=promotion.CHAMPION,
        from_version=promotion.alias_version(client, name, promotion.CHAMPION), to_version=version,
        reason=f"no decision within {waited_s:.0f} s; champion unchanged", run_id=run_id,
        flow_run_id=flow_run_id, started_by=started_by,
    )  # fmt: skip


def wait_for_decision(
    client: MlflowClient,
    name: str,
    flow_run_id: str,
    before_seqs: Collection[int],
    timeout_s: float,
    poll_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> dict | None:
    """The audit event the paused run ``flow_run_id`` records once resumed (approve, reject, or a refusal), or
    None when none appears within ``timeout_s``. Events whose ``seq`` is in ``before_seqs`` (the trail before the
    decision was sent) and events of other runs are ignored."""
    deadline = time.monotonic() + timeout_s
    while True:
        for event in promotion.history(client, name):
            if event["seq"] not in before_seqs and event.get("flow_run_id") == flow_run_id:
                return event
        if time.monotonic() >= deadline:
            return None
        sleep(poll_s)
