"""Promotion approved by an ML lead: the paused flow run, its input form, and `steelqc registry approve`.

With approval policy ``manual`` a run whose gates passed registers the version as ``challenger`` and then pauses
with a typed input form (:class:`ApprovalInput`): the ML lead approves or rejects in the Prefect UI (the flow run's
"Resume" button) or with ``steelqc registry approve <flow-run-id> --reviewer NAME [--reject]``. The flow applies
the decision through ``model_registry.approval`` (audited, locked). A self-approval is refused and recorded, and
the run pauses again for another reviewer until the approval timeout; on timeout the champion stays as it was.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from prefect.input import RunInput
from pydantic import Field

from steelqc.tasks.config import Settings

log = logging.getLogger("flows.approval")


class ApprovalInput(RunInput):
    """The form an ML lead fills in to resume a paused training run."""

    decision: Literal["approve", "reject"] = Field(
        default="approve", description="approve: the challenger becomes champion; reject: champion unchanged"
    )
    reviewer: str = Field(description="Your name; it must not be whoever started this run")
    comment: str = Field(default="", description="Why (kept in the registry's audit trail)")


def _fmt(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def request_markdown(summary: dict, started_by: str, timeout_s: int, flow_run_id: str | None) -> str:
    """What the reviewer sees: gate table, the comparison with the champion, how to decide."""
    gates = summary["gates"]
    champion = summary.get("champion_before") or {}
    rows = [
        f"# Approval needed: {summary['registered_model']} v{summary['model_version']} → champion",
        "",
        f"Started by **{started_by}** (who may not approve it). Waiting up to {timeout_s / 3600:.1f} h; "
        "without a decision the champion stays as it is.",
        "",
        "| gate | value | threshold | passed |",
        "|---|---|---|---|",
    ]
    for name, gate in gates.items():
        if isinstance(gate, dict) and "passed" in gate:
            value, limit = gate.get("value"), gate.get("threshold")
            rows.append(f"| {name} | {_fmt(value)} | {_fmt(limit)} | {'yes' if gate['passed'] else 'NO'} |")
    rows += ["", "| on this run's test split | challenger | champion |", "|---|---|---|"]
    metrics = {**summary["metrics"], "glare_delta_f1": (summary["metrics"].get("glare") or {}).get("delta_f1")}
    for key in ("macro_f1", "critical_recall", "critical_precision", "glare_delta_f1"):
        rows.append(f"| {key} | {_fmt(metrics.get(key))} | {_fmt(champion.get(key))} |")
    if champion:
        rows.append(f"| version | v{summary['model_version']} | v{champion.get('version')} |")
    else:
        rows.append("\nNo champion yet: this would be the first.")
    rows += [
        "",
        "**Decide** with the flow run's *Resume* button (form: decision, reviewer, comment), or:",
        "",
        f"`steelqc registry approve {flow_run_id} --reviewer YOUR_NAME [--reject] [--comment TEXT]`",
    ]
    return "\n".join(rows)


def await_approval(settings: Settings, summary: dict, started_by: str, flow_run_id: str | None) -> dict:
    """Pause for the ML lead's decision and apply it. Returns ``{promoted, reason, approval}``."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    from steelqc.flows import alerts
    from steelqc.model_registry import approval, promotion
    from steelqc.model_registry.store import client

    mlflow_client = client(settings)
    name, version = settings.registered_model, str(summary["model_version"])
    seen = (summary.get("champion_before") or {}).get("version")
    seen = str(seen) if seen is not None else None
    markdown = request_markdown(summary, started_by, settings.approval_timeout_s, flow_run_id)
    create_markdown_artifact(markdown=markdown, key="approval-request", description=f"{name} v{version}")
    alert = alerts.notify(
        settings,
        "awaiting-approval",
        f"{name} v{version} passed its gates and awaits an ML lead's approval",
        {"run_id": summary["run_id"], "macro_f1": summary["metrics"].get("macro_f1"), "started_by": started_by},
        flow_run_id,
    )
    common = {"run_id": summary["run_id"], "flow_run_id": flow_run_id, "timeout_s": settings.lock_timeout_s}
    start = time.monotonic()
    attempt = 0
    while True:
        remaining = int(settings.approval_timeout_s - (time.monotonic() - start))
        attempt += 1
        try:
            if remaining <= 0:
                raise FlowPauseTimeout("approval timeout")
            answer = pause_flow_run(
                wait_for_input=ApprovalInput.with_initial_data(description=markdown),
                timeout=remaining,
                poll_interval=settings.approval_poll_s,
                key=f"approval-{attempt}",
            )
        except FlowPauseTimeout:
            event = approval.timed_out(
                mlflow_client, name, version, waited_s=settings.approval_timeout_s, started_by=started_by, **common
            )
            return {"promoted": False, "reason": event["reason"], "approval": {"decision": "timeout"}, "alert": alert}
        decided = {"decision": answer.decision, "reviewer": answer.reviewer, "comment": answer.comment}
        try:
            if answer.decision == "approve":
                event = approval.approve(
                    mlflow_client, name, version, reviewer=answer.reviewer, started_by=started_by,
                    seen_champion=seen, comment=answer.comment, **common,
                )  # fmt: skip
                return {"promoted": True, "reason": event["reason"], "approval": decided, "alert": alert}
            event = approval.reject(
                mlflow_client, name, version, reviewer=answer.reviewer, started_by=started_by,
                comment=answer.comment, **common,
            )  # fmt: skip
            return {"promoted": False, "reason": event["reason"], "approval": decided, "alert": alert}
        except approval.ReviewerRefused as exc:
            log.warning("%s; waiting for another reviewer", exc)
        except promotion.PromotionRefused as exc:
            return {"promoted": False, "reason": str(exc), "approval": {**decided, "refused": str(exc)}}
