"""MLflow's database schema against the MLflow steelqc runs: an older database is to be upgraded, a newer one cannot
be used, and MLflow's own error says "run mlflow db upgrade" for both. :func:`explain` tells them apart by whether
the database's schema revision is one this MLflow ships a migration for."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REVISION_FILE = re.compile(r"^([0-9a-f]{12})_\w+\.py$")
OUT_OF_DATE = re.compile(r"out-of-date database schema \(found version (\w+), but expected (\w+)\)")


@cache
def known_revisions() -> frozenset[str]:
    """The schema revisions this MLflow knows (its migration files are named ``<revision>_<what>.py``)."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or spec.origin is None:
        return frozenset()
    folder = Path(spec.origin).parent / "store" / "db_migrations" / "versions"
    return frozenset(m[1] for p in folder.glob("*.py") if (m := REVISION_FILE.match(p.name)))


def _mlflow_version() -> str:
    try:
        return version("mlflow")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def explain(exc: BaseException) -> str | None:
    """What to do about an MLflow database whose schema is not this MLflow's (None for any other error)."""
    match = OUT_OF_DATE.search(str(exc))
    if match is None:
        return None
    found, expected = match.groups()
    ours = f"this steelqc's MLflow {_mlflow_version()} expects schema {expected}"
    if found in known_revisions():
        return (
            f"The MLflow database was written by an older MLflow (schema {found}; {ours}). Back it up "
            "(infra/backup.sh), then upgrade it: `mlflow db upgrade <its URL>` (the tracking store: "
            "STEELQC_TRACKING_URI, the <prefix>_mlflow database of STEELQC_DATABASE_URL, or "
            "sqlite:///STEELQC_HOME/mlflow.db)."
        )
    return (
        f"The MLflow database was written by a newer MLflow (schema {found} is unknown here; {ours}): upgrade steelqc "
        "to the version that wrote it, or restore a backup made with this one (infra/restore.sh); `mlflow db upgrade` "
        "cannot go back."
    )
