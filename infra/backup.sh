#!/usr/bin/env bash
# Back up steelqc's databases, MLflow artifact store and STEELQC_HOME files into a new folder (infra/backup.py).
#
#   infra/backup.sh OUT [--json]
#
# Reads the steelqc settings: STEELQC_DATABASE_URL (pg_dump -Fc of each steelqc_* database; SQLite files without it),
# STEELQC_ARTIFACTS_DESTINATION (a folder or s3://bucket/prefix with STEELQC_S3_ENDPOINT_URL), STEELQC_HOME.
# Restore with infra/restore.sh OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m steelqc.infra.backup backup "$@"
