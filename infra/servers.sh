#!/usr/bin/env bash
# Local Prefect (API + UI on 127.0.0.1:4200) and MLflow (127.0.0.1:5000) servers, in the background.
#
#   infra/servers.sh start|stop|status [--only prefect|mlflow] [--json]
#
# The same as `steelqc server ...` (infra/services.py): pid and log files under $STEELQC_HOME/servers/, health-checked
# before `start` returns. SQLite under $STEELQC_HOME by default; STEELQC_DATABASE_URL=postgresql://... gives each
# service its own database (try it with infra/postgres.sh start DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${STEELQC:-.venv/bin/steelqc}" server "$@"
