"""Versions, aliases and the audit trail: every alias move goes through :func:`move_alias`.

* **Lock.** A promotion lock is a registered model named ``<model>.promotion-lock``: creating a registered model is
  atomic in every MLflow store (the name is a primary key), so the lock holds across machines that share one
  tracking server. A lock older than ``STALE_LOCK_S`` (a crashed holder) is broken with a warning; so is, at once,
  one whose holder is gone: a process of this host that no longer runs, or this very process when it does not hold
  it any more (its release failed because the tracking server had gone away).
* **Audit trail.** Each decision is a registered-model tag ``audit/<seq>`` holding a JSON event (when, action,
  alias, from which version to which, why, by whom, run id), so everyone on one tracking server sees the same
  history. Events are written inside the lock, so sequence numbers never collide.
* **Never half-changed.** If the audit write fails after an alias moved, the alias is put back before the error
  propagates. A version is created with all its tags in one call (one transaction in the store); when the server
  went away before its ``register`` event was written, the retry that finds the version writes it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from steelqc.model_registry.policy import (
    CHALLENGER,
    CHAMPION,
    GATES_PASSED,
    GATES_PASSED_TAG,
    PromotionDecision,
    PromotionOutcome,
    unchanged,
)

log = logging.getLogger(__name__)

__all__ = ["CHALLENGER", "CHAMPION"]  # re-exported: promotion.CHAMPION is the alias everyone moves
LOCK_SUFFIX = ".promotion-lock"
AUDIT_PREFIX = "audit/"
STALE_LOCK_S = 600.0
PROMOTING_ACTIONS = ("promote", "approve", "rollback")
_HELD: set[str] = set()  # the promotion locks this process holds now
_HELD_GUARD = threading.Lock()
SUPERSEDED_BY = "superseded_by"  # version tag: the version this one was repackaged as (model_registry.packaging)


class PromotionRefused(RuntimeError):
    """An alias move that the rules forbid (gates failed, champion changed, self-approval...)."""


class LockTimeout(RuntimeError):
    """The promotion lock could not be had in time."""


def _holder_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(tags: dict[str, str], lock_name: str) -> str | None:
    """Why the holder recorded in a lock's tags certainly no longer holds it (None when it may): a process of this
    host that is not running, or this process, which does not hold ``lock_name`` now."""
    if tags.get("host") != socket.gethostname() or not str(tags.get("pid", "")).isdigit():
        return None
    pid = int(tags["pid"])
    if pid == os.getpid():
        with _HELD_GUARD:
            return None if lock_name in _HELD else "left behind by this process (its release failed)"
    return None if _holder_alive(pid) else f"its holder, process {pid} on this host, is gone"


def actor() -> str:
    """Who is acting: ``STEELQC_ACTOR`` or ``user@host``."""
    return os.environ.get("STEELQC_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _already_exists(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(exc).lower()


@contextlib.contextmanager
def registry_lock(
    client: MlflowClient, name: str, timeout_s: float = 120.0, owner: str | None = None
) -> Iterator[None]:
    """Hold the promotion lock of registered model ``name`` (see the module docstring)."""
    lock_name = f"{name}{LOCK_SUFFIX}"
    owner = owner or f"{actor()} pid {os.getpid()}"
    tags = {"owner": owner, "host": socket.gethostname(), "pid": str(os.getpid())}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(
                lock_name,
                tags={**tags, "acquired_at": str(time.time())},
                description="steelqc promotion lock (transient)",
            )
            break
        except MlflowException as exc:
            if not _already_exists(exc):
                raise
        try:
            held = client.get_registered_model(lock_name)
            age = time.time() - float(held.tags.get("acquired_at", time.time()))
        except MlflowException:
            continue  # released between our attempts
        gone = holder_gone(held.tags, lock_name)
        if gone or age > STALE_LOCK_S:
            why = gone or f"older than {STALE_LOCK_S:.0f} s"
            log.warning(
                "breaking the promotion lock of %s held by %s for %.0f s: %s", name, held.tags.get("owner"), age, why
            )
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock_name)
            continue
        if time.monotonic() > deadline:
            raise LockTimeout(
                f"promotion lock of {name!r} held by {held.tags.get('owner')} for {age:.0f} s (waited "
                f"{timeout_s:.0f} s, setting lock_timeout_s): run again once it is released; a lock older than "
                f"{STALE_LOCK_S:.0f} s, or one whose process on this host is gone, is broken by the next attempt"
            )
        time.sleep(0.1 + random.random() * 0.2)
    with _HELD_GUARD:
        _HELD.add(lock_name)
    try:
        yield
    finally:
        with _HELD_GUARD:
            _HELD.discard(lock_name)
        try:
            client.delete_registered_model(lock_name)
        except MlflowException as exc:  # the tracking server went away, or someone broke our lock
            log.warning(
                "could not release promotion lock %s (%s): the next attempt breaks it (this host), or it expires "
                "after %.0f s",
                lock_name, exc, STALE_LOCK_S,
            )  # fmt: skip


# --------------------------------------------------------------------------------------------- audit


def history(client: MlflowClient, name: str) -> list[dict]:
    """All audit events of ``name``, oldest first."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    events = [json.loads(v) for k, v in model.tags.items() if k.startswith(AUDIT_PREFIX)]
    return sorted(events, key=lambda e: e["seq"])


def _record(client: MlflowClient, name: str, event: dict) -> dict:
    """Append one audit event (call inside the lock)."""
    model = client.get_registered_model(name)
    seqs = [int(k[len(AUDIT_PREFIX) :]) for k in model.tags if k.startswith(AUDIT_PREFIX)]
    event = {"seq": max(seqs, default=0) + 1, "time": _now(), **event}
    client.set_registered_model_tag(name, f"{AUDIT_PREFIX}{event['seq']:08d}", json.dumps(event, default=str))
    log.info("audit %s: %s", name, event)
    return event


def record_decision(client: MlflowClient, name: str, timeout_s: float = 120.0, **event: Any) -> dict:
    """Record a decision that moves no alias (gates failed, approval rejected, ...)."""
    ensure_registered_model(client, name)
    with registry_lock(client, name, timeout_s):
        return _record(client, name, {"actor": actor(), **event})


# ------------------------------------------------------------------------------------ versions, aliases


def ensure_registered_model(client: MlflowClient, name: str, tags: dict[str, str] | None = None) -> None:
    """Create the registered model if it does not exist (concurrent creators are fine)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, tags=tags, description="steelqc steel-surface defect classifier")
        except MlflowException as exc:
            if not _already_exists(exc):
                raise


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """{alias: version} of ``name`` (empty when it does not exist)."""
    try:
        return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    return aliases(client, name).get(alias)


def logged_model_id(model_uri: str) -> str | None:
    """The id of the logged model a ``models:/<model_id>`` URI names (what MLflow 3's ``log_model`` returns), None
    for any other URI. A tracking server refuses such a source without its ``model_id``; a local store does not."""
    prefix = "models:/"
    rest = model_uri.removeprefix(prefix)
    if not model_uri.startswith(prefix) or not rest.startswith("m-") or "/" in rest or "@" in rest:
        return None
    return rest


def register_version(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    timeout_s: float = 120.0,
    *,
    reason: str = "new version from training run",
    existing: str | None = None,
) -> tuple[ModelVersion, bool]:
    """Register ``model_uri`` as a version of ``name``, once per training run (a retry returns the same version).

    ``existing``: the search filter of a version that makes this one a retry (default: one from the same run).
    Returns (version, created).
    """
    ensure_registered_model(client, name)
    with registry_lock(client, name, timeout_s):
        found = client.search_model_versions(existing or f"name='{name}' and run_id='{run_id}'")
        if found:
            version = min(found, key=lambda v: int(v.version))
            log.info("%s already registered as %s v%s", existing or f"run {run_id}", name, version.version)
            if not _registration_recorded(client, name, str(version.version)):  # the server went away before
                _record_registration(client, name, str(version.version), run_id, f"{reason} (recorded by a retry)")
            return version, False
        version = client.create_model_version(
            name, source=model_uri, run_id=run_id, tags=tags, model_id=logged_model_id(model_uri)
        )
        _record_registration(client, name, str(version.version), run_id, reason)
        return version, True


def _registration_recorded(client: MlflowClient, name: str, version: str) -> bool:
    """Whether the audit trail holds the ``register`` event of ``version``."""
    return any(e.get("action") == "register" and e.get("to_version") == version for e in history(client, name))


def _record_registration(client: MlflowClient, name: str, version: str, run_id: str, reason: str) -> dict:
    """The audit event of a new version (call inside the lock)."""
    event = {"action": "register", "alias": None, "from_version": None, "to_version": version, "reason": reason}
    return _record(client, name, {**event, "actor": actor(), "run_id": run_id})


def gates_passed(client: MlflowClient, name: str, version: str) -> bool:
    return client.get_model_version(name, version).tags.get(GATES_PASSED_TAG) == "true"


def move_alias(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str,
    *,
    action: str,
    reason: str,
    who: str | None = None,
    run_id: str | None = None,
    check: Callable[[str | None], str | None] | None = None,
    require_gates: bool = True,
    timeout_s: float = 120.0,
    extra: dict | None = None,
) -> dict:
    """The one audited, locked way to point ``alias`` at ``version``.

    Inside the lock: reads the alias's current version, refuses a version whose gates did not pass
    (``require_gates``), runs ``check(current_version)`` (a non-empty string refuses with that reason), moves
    the alias and appends the audit event. A refusal is recorded too, then raised as :class:`PromotionRefused`.
    """
    who = who or actor()
    version = str(version)
    with registry_lock(client, name, timeout_s):
        current = alias_version(client, name, alias)
        base = {
            "action": action,
            "alias": alias,
            "from_version": current,
            "to_version": version,
            "actor": who,
            "run_id": run_id,
            **(extra or {}),
        }
        why_not = None
        if require_gates and not gates_passed(client, name, version):
            why_not = f"version {version} did not pass its gates"
        elif check is not None:
            why_not = check(current)
        if why_not:
            _record(client, name, {**base, "action": f"{action}-refused", "reason": why_not})
            raise PromotionRefused(why_not)
        client.set_registered_model_alias(name, alias, version)
        try:
            return _record(client, name, {**base, "reason": reason})
        except Exception:
            log.error("audit write failed; restoring %s -> %s", alias, current)
            if current is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, current)
            raise


def _current_form(client: MlflowClient, name: str, version: str) -> str:
    """``version``, or the version it was repackaged as (its ``superseded_by`` tag, followed to the end)."""
    seen = {version}
    while (successor := client.get_model_version(name, version).tags.get(SUPERSEDED_BY)) and successor not in seen:
        seen.add(successor)
        version = successor
    return version


def rollback(client: MlflowClient, name: str, reason: str = "rollback", who: str | None = None) -> dict:
    """Point ``champion`` back at the last earlier champion that passed its gates (a repackaged one as its
    repackaged version)."""
    current = alias_version(client, name, CHAMPION)
    champions = [
        e["to_version"]
        for e in history(client, name)
        if e.get("alias") == CHAMPION and e.get("action") in PROMOTING_ACTIONS
    ]
    for earlier in reversed(champions):
        version = _current_form(client, name, earlier)
        if version != current and gates_passed(client, name, version):
            return move_alias(
                client,
                name,
                CHAMPION,
                version,
                action="rollback",
                reason=reason,
                who=who,
                check=unchanged(current),
            )
    raise PromotionRefused(f"no earlier champion of {name!r} that passed its gates (current: {current})")


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    decision: PromotionDecision,
    *,
    run_id: str | None,
    champion_before: str | None,
    timeout_s: float = 120.0,
) -> PromotionOutcome:
    """Carry out :func:`model_registry.policy.decide_promotion`'s ``decision`` on ``version``: record why nothing
    moves, or move ``challenger`` and (policy auto) ``champion``, refused when the champion is no longer
    ``champion_before``, the one the gates compared with."""
    if not decision.challenger:
        record_decision(
            client, name, timeout_s, action="not-promoted", alias=None, from_version=None, to_version=version,
            reason=decision.audit_reason, run_id=run_id,
        )  # fmt: skip
        return PromotionOutcome(False, decision.reason)
    move_alias(
        client, name, CHALLENGER, version, action="challenger", reason=GATES_PASSED, run_id=run_id, timeout_s=timeout_s
    )
    if not decision.champion:
        return PromotionOutcome(False, decision.reason, pending=decision.pending)
    still = unchanged(
        champion_before, during="during this run", then="not promoted (re-run to compare with the new champion)"
    )
    try:
        move_alias(
            client, name, CHAMPION, version, action="promote", reason=decision.audit_reason, run_id=run_id,
            timeout_s=timeout_s, check=still,
        )  # fmt: skip
    except PromotionRefused as exc:
        return PromotionOutcome(False, str(exc))
    return PromotionOutcome(True, decision.reason)
