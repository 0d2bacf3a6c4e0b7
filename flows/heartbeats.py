"""A flow run that goes silent is marked Crashed, never left Running (README "Faults and retries").

Every flow run sends a heartbeat event every ``flow_heartbeat_s`` seconds (Prefect's
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``). The Prefect server's automation ``steelqc-crash-silent-runs`` (the "zombie
flows" recipe of Prefect's documentation) marks a run Crashed when neither another heartbeat nor an end state
followed a heartbeat within ``zombie_after_s``: its process was killed, its machine died, or it lost the server and
could not record how it ended. The automation lives on the server and its trigger state in the server's database,
so a server restart does not forget a run. `steelqc server start`, `steelqc serve` and every command that runs a flow
on a server create it, or update it to the settings, by name.

The same settings bound the Prefect client's retries of one API call (``prefect_client_retries``): with the server
gone for longer, the call fails and the run with it.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from prefect import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, PREFECT_FLOWS_HEARTBEAT_FREQUENCY

from steelqc.tasks.config import Settings

log = logging.getLogger("flows.heartbeats")

AUTOMATION = "steelqc-crash-silent-runs"
HEARTBEAT = "prefect.flow-run.heartbeat"
END_STATES = ("Completed", "Failed", "Cancelled", "Crashed")


def client_settings(settings: Settings) -> dict[Any, Any]:
    """Prefect settings of a process that runs flows: heartbeat frequency and the client's retries."""
    return {
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY: settings.flow_heartbeat_s,
        PREFECT_CLIENT_MAX_RETRIES: settings.prefect_client_retries,
    }


def environ(settings: Settings) -> dict[str, str]:
    """The same as environment variables, for the flow-run processes a command starts (`steelqc serve`, workers)."""
    return {
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(settings.flow_heartbeat_s),
        "PREFECT_CLIENT_MAX_RETRIES": str(settings.prefect_client_retries),
    }


def crash_message(settings: Settings) -> str:
    """What the Crashed state says, and what to do."""
    return (
        f"no heartbeat for {settings.zombie_after_s} s: the process running this flow run was killed, its machine "
        "stopped, or it lost the Prefect server and could not record its end (its log and run folder tell how far "
        "it got); a training run continues with `steelqc train --resume`"
    )


def zombie_automation(settings: Settings) -> AutomationCore:
    """The automation that marks a flow run Crashed ``zombie_after_s`` after its last heartbeat, unless another
    heartbeat or an end state came first."""
    return AutomationCore(
        name=AUTOMATION,
        description="steelqc: a flow run silent for zombie_after_s is marked Crashed (README 'Faults and retries')",
        trigger=EventTrigger(
            after={HEARTBEAT},
            expect={HEARTBEAT, *(f"prefect.flow-run.{state}" for state in END_STATES)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=settings.zombie_after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=crash_message(settings))],
    )


def ensure_zombie_automation(settings: Settings) -> dict[str, Any]:
    """Create the automation on the current Prefect server, or update it to ``settings`` (found by name); returns
    its name, id, window and ``change`` (created, kept or updated)."""
    wanted = zombie_automation(settings)
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(AUTOMATION)
        if not found:
            automation_id, change = client.create_automation(wanted), "created"
        elif _same(found[0], wanted):  # left alone: an update gives the trigger a new id and drops what it tracks
            automation_id, change = found[0].id, "kept"
        else:
            client.update_automation(found[0].id, wanted)
            automation_id, change = found[0].id, "updated"
    log.debug("automation %s %s (%s)", AUTOMATION, change, automation_id)
    return {"name": AUTOMATION, "id": str(automation_id), "zombie_after_s": settings.zombie_after_s, "change": change}


def _same(found: Any, wanted: AutomationCore) -> bool:
    """Whether the server's automation already does what ``wanted`` does (enabled, same window and action)."""
    trigger = found.trigger
    return (
        found.enabled
        and getattr(trigger, "within", None) == wanted.trigger.within
        and getattr(trigger, "posture", None) == Posture.Proactive
        and [a.model_dump(mode="json") for a in found.actions] == [a.model_dump(mode="json") for a in wanted.actions]
    )


def bound_flow_processes(settings: Settings) -> None:
    """Heartbeats and client retries for flow-run processes this process starts (they inherit the environment)."""
    os.environ.update(environ(settings))
