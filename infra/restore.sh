#!/usr/bin/env bash
# Restore a folder written by infra/backup.sh (infra/backup.py): databases, artifact store, STEELQC_HOME files.
#
#   infra/restore.sh BACKUP [--replace] [--json]
#
# Stop the servers first (steelqc server stop). The manifest and every file's SHA-256 are checked before anything is
# written; existing databases with tables, a non-empty artifact store or existing home files are refused unless
# --replace. Restore onto the same STEELQC_HOME path and artifacts destination (the MLflow database records them).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m steelqc.infra.backup restore "$@"
