"""What the dashboard's *Models* page and the version picker read from the registry: versions with their aliases
and gate results, and the audit trail (:func:`steelqc.model_registry.promotion.history`).

Read-only: nothing here registers a version or moves an alias. Plain functions over an ``MlflowClient``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from steelqc.model_registry import promotion
from steelqc.model_registry.policy import GATES_PASSED_TAG

log = logging.getLogger(__name__)

AUDIT_COLUMNS = (
    "seq", "time", "action", "alias", "from_version", "to_version", "actor", "reviewer", "comment", "reason",
)  # fmt: skip


@dataclass(frozen=True)
class VersionRow:
    """One registered version as the dashboard lists it. ``gates``: the gate table of its tags ({gate: {value,
    threshold, passed}}; empty when the version has none)."""

    version: str
    aliases: list[str]
    gates_passed: bool | None
    macro_f1: str | None
    threshold: str | None
    created: str
    run_id: str | None
    gates_reason: str | None = None
    gates: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, str]:
        """The row of the versions table (strings only: an HTML table, readable in any browser)."""
        passed = {True: "passed", False: "failed", None: "—"}[self.gates_passed]
        return {
            "version": self.version,
            "aliases": ", ".join(self.aliases) or "—",
            "gates": passed,
            "macro_f1": _figure(self.macro_f1),
            "threshold": _figure(self.threshold),
            "registered": self.created,
            "run": self.run_id or "—",
        }


def _figure(value: Any) -> str:
    """A number (or a number's text, as tags hold it) to at most 4 decimals; "—" when missing; anything else as
    its text (a gate's threshold may be a table)."""
    if value is None or value in ("", "None"):
        return "—"
    if isinstance(value, bool):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() and "." not in str(value) else f"{number:.4g}"


def _gates(tags: dict[str, str]) -> dict[str, Any]:
    try:
        gates = json.loads(tags.get("gates") or "{}")
    except json.JSONDecodeError:  # cut at MLflow's tag limit
        return {}
    return gates if isinstance(gates, dict) else {}


def _created(millis: int | None) -> str:
    if not millis:
        return "—"
    return datetime.fromtimestamp(millis / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def versions(client: MlflowClient, name: str) -> list[VersionRow]:
    """Every version of ``name``, newest first, with its aliases and gate tags (empty when it is not registered)."""
    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        log.warning("cannot list the versions of %s: %s", name, exc)
        return []
    by_version: dict[str, list[str]] = {}
    for alias, version in promotion.aliases(client, name).items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for v in sorted(found, key=lambda v: int(v.version), reverse=True):
        tags = dict(v.tags or {})
        passed = tags.get(GATES_PASSED_TAG)
        rows.append(
            VersionRow(
                version=str(v.version),
                aliases=sorted(by_version.get(str(v.version), [])),
                gates_passed=None if passed is None else passed == "true",
                macro_f1=tags.get("macro_f1"),
                threshold=tags.get("threshold"),
                created=_created(v.creation_timestamp),
                run_id=v.run_id,
                gates_reason=tags.get("gates_reason"),
                gates=_gates(tags),
            )
        )
    return rows


def gate_rows(gates: dict[str, Any]) -> list[dict[str, str]]:
    """A gate table ({gate: {value, threshold, passed}}) as rows of strings."""
    rows = []
    for gate, result in gates.items():
        result = result if isinstance(result, dict) else {"value": result}
        rows.append(
            {
                "gate": str(gate),
                "value": _figure(result.get("value")),
                "threshold": _figure(result.get("threshold")),
                "passed": str(result.get("passed")),
            }
        )
    return rows


def audit_rows(client: MlflowClient, name: str) -> list[dict[str, str]]:
    """The audit trail of ``name``, newest first, one row of strings per event (who did what to which alias)."""
    rows = []
    for event in reversed(promotion.history(client, name)):
        rows.append({col: "" if event.get(col) is None else str(event.get(col)) for col in AUDIT_COLUMNS})
    return rows


def version_uri(name: str, version: str) -> str:
    """The pinned URI of a version: ``models:/name/N``."""
    return f"models:/{name}/{version}"


def alias_uri(name: str, alias: str = promotion.CHAMPION) -> str:
    """``models:/name@alias`` (default: the champion)."""
    return f"models:/{name}@{alias}"
