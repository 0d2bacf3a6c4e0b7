"""Deployments: what `steelqc serve` registers and runs on its schedules.

* ``training-pipeline/nightly-retrain``: cron ``nightly_cron`` (``0 2 * * *``) in ``timezone``, with ``data``
  ``@nightly``: each run resolves it to the sources in ``data_sources`` (``NAME=DIR`` each, joined by class name),
  else the data in ``nightly_data`` (default ``STEELQC_HOME/incoming``), plus the ``reviewed`` source once it holds
  an image (``Settings.nightly_sources``), so no restart is needed after labelling; approval policy ``manual``
  (an ML lead decides; the run waits up to ``approval_timeout_s``), at most one run at a time.
* ``drift-monitor/hourly``: cron ``0 * * * *`` in ``timezone``, on the ``monitor_inbox`` setting (default
  ``STEELQC_HOME/inbox``), at most one run at a time (the monitor's lock file guards it as well).

Schedules carry a fixed slug, so re-deploying updates the same schedule instead of adding one, and
``steelqc serve`` stops with ``pause_on_shutdown=False``, so stopping the serve process leaves them active.
``infra/prefect.yaml`` holds the same deployments for work pools.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from steelqc.tasks.config import NIGHTLY_DATA, Settings

# `steelqc` (flows/cli.py) imports this module as it starts: Prefect, the flows and torch are imported where a
# deployment is built, so `steelqc --help` and the light commands stay fast (hence the `noqa: PLC0415` below).

log = logging.getLogger("flows.deployments")

NIGHTLY = "nightly-retrain"
HOURLY = "hourly"
HOURLY_DRIFT_CRON = "0 * * * *"


def nightly_deployment(settings: Settings):
    """The nightly retraining deployment of ``training-pipeline``."""
    from prefect.schedules import Cron  # noqa: PLC0415  (start-up time of the CLI, see above)

    from steelqc.flows.training import training_pipeline  # noqa: PLC0415  (torch, Prefect: see above)

    return training_pipeline.to_deployment(
        name=NIGHTLY,
        schedules=[Cron(settings.nightly_cron, timezone=settings.timezone, slug=NIGHTLY)],
        parameters={"data": NIGHTLY_DATA, "approval": "manual"},
        concurrency_limit=1,
        tags=["steelqc", "nightly"],
        description="Nightly retraining on the newest factory images; an ML lead approves the promotion.",
    )


def drift_deployment(settings: Settings):
    """``drift-monitor/hourly``: the drift monitor on the ``monitor_inbox`` setting, every hour, one run at a time."""
    from prefect.schedules import Cron  # noqa: PLC0415  (start-up time of the CLI, see above)

    from steelqc.flows.monitoring import drift_monitor  # noqa: PLC0415  (torch, Prefect: see above)

    return drift_monitor.to_deployment(
        name=HOURLY,
        schedules=[Cron(HOURLY_DRIFT_CRON, timezone=settings.timezone, slug=HOURLY)],
        concurrency_limit=1,
        tags=["steelqc", "monitoring"],
        description="Hourly drift check of new factory images; starts the nightly retrain on drift (cool-down).",
    )


def deployments(settings: Settings) -> list:
    """Every deployment `steelqc serve` runs."""
    return [nightly_deployment(settings), drift_deployment(settings)]


def _concurrency_limit(deployment: Any) -> int | None:
    limit = getattr(deployment, "global_concurrency_limit", None)
    return getattr(limit, "limit", None) or getattr(deployment, "concurrency_limit", None)


def describe(deployment_ids: list) -> list[dict[str, Any]]:
    """Name, id and schedules of registered deployments, as the server sees them."""
    from prefect import get_client  # noqa: PLC0415  (start-up time of the CLI, see above)

    out = []
    with get_client(sync_client=True) as client:
        for deployment_id in deployment_ids:
            d = client.read_deployment(deployment_id)
            flow = client.read_flow(d.flow_id)
            out.append(
                {
                    "name": f"{flow.name}/{d.name}",
                    "id": str(d.id),
                    "parameters": d.parameters,
                    "paused": d.paused,
                    "concurrency_limit": _concurrency_limit(d),
                    "schedules": [
                        {
                            "cron": getattr(s.schedule, "cron", None),
                            "timezone": getattr(s.schedule, "timezone", None),
                            "active": s.active,
                            "slug": getattr(s, "slug", None),
                        }
                        for s in d.schedules
                    ],
                }
            )
    return out


def register(settings: Settings) -> list[dict[str, Any]]:
    """Create or update the deployments on the Prefect server (schedules kept by slug); returns their description."""
    return describe([d.apply() for d in deployments(settings)])


def serve(settings: Settings) -> None:
    """Run the deployments' schedules in this process until stopped (schedules stay active afterwards)."""
    from prefect import serve as prefect_serve  # noqa: PLC0415  (start-up time of the CLI, see above)

    def _graceful(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _graceful)  # systemd / Kubernetes stop = Ctrl-C: a clean shutdown
    prefect_serve(*deployments(settings), pause_on_shutdown=False, print_starting_message=False)
