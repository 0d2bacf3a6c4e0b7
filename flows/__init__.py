"""steelqc flows layer: Prefect flows, deployments and the `steelqc` CLI (thin wiring over tasks/)."""

import os

# Wherever Prefect or Albumentations run from steelqc: no telemetry, no update checks (no internet here).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "steelqc")
