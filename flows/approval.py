"""Promotion approved by an ML lead: the paused flow run, its input form, and `steelqc registry approve`.

With approval policy ``manual`` a run whose gates passed registers the version as ``challenger`` and then pauses
with a typed input form (:class:`ApprovalInput`): the ML lead approves or rejects in the Prefect UI (the flow run's
"Resume" button) or with ``steelqc registry approve <flow-run-id> --reviewer NAME [--reject]``. The flow applies
the decision through ``model_registry.approval`` (audited, locked). A self-approval is refused and recorded, and
the run pauses again for another reviewer until the approval timeout; on timeout the champion stays as it was.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from mlflow import MlflowClient
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from steelqc.flows import alerts
from steelqc.model_registry import approval, promotion
from steelqc.model_registry.gates import ChampionScore, GateReport
from steelqc.model_registry.store import client
from steelqc.tasks.config import Settings

log = logging.getLogger("flows.approval")


class ApprovalInput(RunInput):
    """The form an ML lead fills in to resume a paused training run."""

    decision: Literal["approve", "reject"] = Field(
        default="approve", description="approve: the challenger becomes champion; reject: champion unchanged"
    )
    reviewer: str = Field(description="Your name; it must not be whoever started this run")
    comment: str = Field(default="", description="Why (kept in the registry's audit trail)")


@dataclass
class ApprovalRequest:
    """A registered version whose gates passed, and what the reviewer decides on."""

    name: str
    version: str
    run_id: str
    report: GateReport
    metrics: dict[str, Any]
    champion: ChampionScore | None
    started_by: str
    flow_run_id: str | None


@dataclass
class ApprovalOutcome:
    """The decision applied: ``promoted``, why, ``approval`` (decision, reviewer, comment, or ``{"decision":
    "timeout"}``; ``refused`` when the registry refused it) and the awaiting-approval alert that went out."""

    promoted: bool
    reason: str
    approval: dict[str, Any]
    alert: dict[str, Any] | None = None


def _fmt(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def request_markdown(request: ApprovalRequest, timeout_s: int) -> str:
    """What the reviewer sees: gate table, the comparison with the champion, how to decide."""
    rows = [
        f"# Approval needed: {request.name} v{request.version} → champion",
        "",
        f"Started by **{request.started_by}** (who may not approve it). Waiting up to {timeout_s / 3600:.1f} h; "
        "without a decision the champion stays as it is.",
        "",
        "| gate | value | threshold | passed |",
        "|---|---|---|---|",
    ]
    for name, gate in request.report.gates.items():
        rows.append(f"| {name} | {_fmt(gate.value)} | {_fmt(gate.threshold)} | {'yes' if gate.passed else 'NO'} |")
    rows += ["", "| on this run's test split | challenger | champion |", "|---|---|---|"]
    metrics = {**request.metrics, "glare_delta_f1": (request.metrics.get("glare") or {}).get("delta_f1")}
    for key in ("macro_f1", "critical_recall", "critical_precision", "glare_delta_f1"):
        rows.append(f"| {key} | {_fmt(metrics.get(key))} | {_fmt(getattr(request.champion, key, None))} |")
    if request.champion is not None:
        rows.append(f"| version | v{request.version} | v{request.champion.version} |")
    else:
        rows.append("\nNo champion yet: this would be the first.")
    rows += [
        "",
        "**Decide** with the flow run's *Resume* button (form: decision, reviewer, comment), or:",
        "",
        f"`steelqc registry approve {request.flow_run_id} --reviewer YOUR_NAME [--reject] [--comment TEXT]`",
    ]
    return "\n".join(rows)


def await_approval(settings: Settings, request: ApprovalRequest) -> ApprovalOutcome:
    """Publish the request, raise the awaiting-approval alert, pause for the ML lead's decision and apply it; a
    reviewer who may not decide is refused and the run pauses again, until the approval timeout."""
    mlflow_client = client(settings)
    markdown = request_markdown(request, settings.approval_timeout_s)
    create_markdown_artifact(
        markdown=markdown, key="approval-request", description=f"{request.name} v{request.version}"
    )
    alert = alerts.notify(
        settings,
        "awaiting-approval",
        f"{request.name} v{request.version} passed its gates and awaits an ML lead's approval",
        {"run_id": request.run_id, "macro_f1": request.metrics.get("macro_f1"), "started_by": request.started_by},
        request.flow_run_id,
    )
    deadline = time.monotonic() + settings.approval_timeout_s
    for attempt in itertools.count(1):
        answer = _pause(settings, markdown, attempt, int(deadline - time.monotonic()))
        if answer is None:
            event = approval.timed_out(
                mlflow_client, request.name, request.version, waited_s=settings.approval_timeout_s,
                started_by=request.started_by, **_common(settings, request),
            )  # fmt: skip
            return ApprovalOutcome(False, event["reason"], {"decision": "timeout"}, alert)
        outcome = _apply(mlflow_client, settings, request, answer)
        if outcome is not None:
            return replace(outcome, alert=alert)
    raise AssertionError("unreachable")


def _pause(settings: Settings, markdown: str, attempt: int, remaining_s: int) -> ApprovalInput | None:
    """The reviewer's answer, or None once the approval time has run out."""
    if remaining_s <= 0:
        return None
    try:
        return pause_flow_run(
            wait_for_input=ApprovalInput.with_initial_data(description=markdown),
            timeout=remaining_s,
            poll_interval=settings.approval_poll_s,
            key=f"approval-{attempt}",
        )
    except FlowPauseTimeout:
        return None


def _common(settings: Settings, request: ApprovalRequest) -> dict[str, Any]:
    return {"run_id": request.run_id, "flow_run_id": request.flow_run_id, "timeout_s": settings.lock_timeout_s}


def _apply(
    mlflow_client: MlflowClient, settings: Settings, request: ApprovalRequest, answer: ApprovalInput
) -> ApprovalOutcome | None:
    """Apply the answer through the registry; None when this reviewer may not decide (another one can)."""
    decided = {"decision": answer.decision, "reviewer": answer.reviewer, "comment": answer.comment}
    who = {"reviewer": answer.reviewer, "started_by": request.started_by, "comment": answer.comment}
    try:
        if answer.decision == "approve":
            seen = request.champion.version if request.champion is not None else None
            event = approval.approve(
                mlflow_client, request.name, request.version, seen_champion=seen, **who, **_common(settings, request)
            )
        else:
            event = approval.reject(mlflow_client, request.name, request.version, **who, **_common(settings, request))
    except approval.ReviewerRefused as exc:
        log.warning("%s; waiting for another reviewer", exc)
        return None
    except promotion.PromotionRefused as exc:
        return ApprovalOutcome(False, str(exc), {**decided, "refused": str(exc)})
    return ApprovalOutcome(answer.decision == "approve", event["reason"], decided)
