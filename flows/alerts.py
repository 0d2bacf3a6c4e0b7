"""Alerts: a failed run, a run that fails its gates, a run waiting for approval.

Each alert is (1) a Prefect event ``steelqc.alert.<kind>`` on the flow run (it shows in the UI's event feed, and an
automation can act on it), and (2) a notification through a Prefect notification block: the saved block named by
``alert_block`` (``type-slug/name``: Slack, Teams, e-mail, ...) or a JSON POST to ``alert_webhook_url``. Each carries
a link to the flow run in the Prefect UI. An alert never fails the run it reports on.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from steelqc.tasks.config import Settings

log = logging.getLogger("flows.alerts")


def flow_run_link(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI (None without a run or a known UI)."""
    if not flow_run_id:
        return None
    ui = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def _block(settings: Settings):
    """The notification block to send through, or None."""
    if settings.alert_block:
        return Block.load(settings.alert_block)
    if settings.alert_webhook_url:
        return CustomWebhookNotificationBlock(
            name="steelqc-alerts",
            url=settings.alert_webhook_url,
            method="POST",
            json_data={"title": "{{subject}}", "text": "{{body}}"},
        )
    return None


def notify(settings: Settings, kind: str, subject: str, details: dict[str, Any], flow_run_id: str | None) -> dict:
    """Raise one alert; returns what was sent (for the flow summary)."""
    link = flow_run_link(flow_run_id)
    body_lines = [subject, *(f"{k}: {v}" for k, v in details.items())]
    if link:
        body_lines.append(f"Prefect: {link}")
    body = "\n".join(body_lines)
    sent: dict[str, Any] = {"kind": kind, "subject": subject, "link": link, "event": False, "notified": False}
    try:
        resource = {"prefect.resource.id": f"steelqc.alert.{flow_run_id or 'none'}", "steelqc.alert": kind}
        related = (
            [{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}]
            if flow_run_id
            else []
        )
        sent["event"] = (
            emit_event(
                event=f"steelqc.alert.{kind}",
                resource=resource,
                related=related,
                payload={"subject": subject, "link": link, **details},
            )
            is not None
        )
    except Exception as exc:  # the alert must not fail the run
        log.warning("could not emit the %s event: %s", kind, exc)
    try:
        block = _block(settings)
        if block is not None:
            block.notify(body=body, subject=f"[steelqc] {subject}")
            sent["notified"] = True
    except Exception as exc:
        log.warning("could not send the %s notification: %s", kind, exc)
    log.warning("ALERT %s: %s%s", kind, subject, f" ({link})" if link else "")
    return sent
