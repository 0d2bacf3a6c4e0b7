"""Registration, alias moves, audit trail and rollback against a real MLflow store (SQLite under STEELQC_HOME)."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from pathlib import Path

import mlflow
import pytest

from steelqc.model_registry.approval import ReviewerRefused, approve, reject
from steelqc.model_registry.promotion import (
    CHAMPION,
    LOCK_SUFFIX,
    LockTimeout,
    PromotionRefused,
    alias_version,
    aliases,
    ensure_registered_model,
    history,
    move_alias,
    register_version,
    registry_lock,
    rollback,
)
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings


def new_version(settings: Settings, c, passed: bool) -> str:
    with mlflow.start_run() as run:
        mlflow.log_dict({"passed": passed}, "model/info.json")
        version, created = register_version(
            c,
            settings.registered_model,
            f"runs:/{run.info.run_id}/model",
            run.info.run_id,
            {"gates_passed": "true" if passed else "false"},
        )
    assert created
    return str(version.version)


def test_registration_is_idempotent_per_run(store) -> None:
    settings, c = store
    with mlflow.start_run() as run:
        mlflow.log_dict({}, "model/info.json")
        uri = f"runs:/{run.info.run_id}/model"
        first, created = register_version(c, settings.registered_model, uri, run.info.run_id, {})
        again, created_again = register_version(c, settings.registered_model, uri, run.info.run_id, {})
    assert created and not created_again and first.version == again.version
    assert len(c.search_model_versions(f"name='{settings.registered_model}'")) == 1


def test_alias_moves_refusals_audit_and_rollback(store) -> None:
    settings, c = store
    name = settings.registered_model
    v1, v_bad, v3 = new_version(settings, c, True), new_version(settings, c, False), new_version(settings, c, True)
    move_alias(c, name, CHAMPION, v1, action="promote", reason="first", who="lead-a")
    with pytest.raises(PromotionRefused, match="did not pass its gates"):
        move_alias(c, name, CHAMPION, v_bad, action="promote", reason="should not happen")
    assert alias_version(c, name, CHAMPION) == v1
    move_alias(c, name, CHAMPION, v3, action="promote", reason="better", who="lead-b")
    assert aliases(c, name) == {CHAMPION: v3}
    event = rollback(c, name, reason="plant reported false alarms", who="lead-a")
    assert (event["from_version"], event["to_version"]) == (v3, v1)
    assert alias_version(c, name, CHAMPION) == v1
    events = history(c, name)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    moves = [(e["action"], e.get("from_version"), e["to_version"], e["actor"]) for e in events if e["alias"]]
    assert moves == [
        ("promote", None, v1, "lead-a"),
        ("promote-refused", v1, v_bad, moves[1][3]),
        ("promote", v1, v3, "lead-b"),
        ("rollback", v3, v1, "lead-a"),
    ]
    assert events[-1]["reason"] == "plant reported false alarms"


def test_rollback_skips_versions_that_failed_gates_and_needs_an_earlier_champion(store) -> None:
    settings, c = store
    name = settings.registered_model
    v1 = new_version(settings, c, True)
    move_alias(c, name, CHAMPION, v1, action="promote", reason="only one")
    with pytest.raises(PromotionRefused, match="no earlier champion"):
        rollback(c, name)


def test_check_inside_the_lock_refuses_a_stale_decision(store) -> None:
    settings, c = store
    name = settings.registered_model
    v1, v2 = new_version(settings, c, True), new_version(settings, c, True)
    seen = alias_version(c, name, CHAMPION)  # None: evaluated against "no champion"
    move_alias(c, name, CHAMPION, v1, action="promote", reason="other run won")
    with pytest.raises(PromotionRefused, match="champion changed"):
        move_alias(
            c,
            name,
            CHAMPION,
            v2,
            action="promote",
            reason="auto",
            check=lambda now: None if now == seen else f"champion changed from {seen} to {now}",
        )
    assert alias_version(c, name, CHAMPION) == v1


def _race(home: str, version: str, barrier) -> str:
    os.environ["STEELQC_HOME"] = home
    settings = Settings()
    configure(settings)
    c = client(settings)
    seen = alias_version(c, settings.registered_model, CHAMPION)
    barrier.wait()
    try:
        move_alias(
            c,
            settings.registered_model,
            CHAMPION,
            version,
            action="promote",
            reason="race",
            check=lambda now: None if now == seen else f"champion changed from {seen} to {now}",
        )
        return "promoted"
    except PromotionRefused:
        return "refused"


def test_two_concurrent_promotions_leave_exactly_one_champion(store, steelqc_home: Path) -> None:
    """Three processes race for champion: two versions that passed their gates, one that failed them."""
    settings, c = store
    v1, v2, failed = new_version(settings, c, True), new_version(settings, c, True), new_version(settings, c, False)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(3)
        with ctx.Pool(3) as pool:
            outcomes = pool.starmap(_race, [(str(steelqc_home), v, barrier) for v in (v1, v2, failed)])
    assert sorted(outcomes) == ["promoted", "refused", "refused"] and outcomes[2] == "refused"
    champion = alias_version(c, settings.registered_model, CHAMPION)
    assert champion in (v1, v2) and outcomes[(v1, v2).index(champion)] == "promoted"
    assert c.get_model_version(settings.registered_model, champion).tags["gates_passed"] == "true"
    events = [e for e in history(c, settings.registered_model) if e["alias"] == CHAMPION]
    assert [e["action"] for e in events].count("promote") == 1
    assert sorted(e["action"] for e in events) == ["promote", "promote-refused", "promote-refused"]


def test_lock_times_out_while_held(store) -> None:
    settings, c = store
    ensure_registered_model(c, settings.registered_model)
    with (
        registry_lock(c, settings.registered_model),
        pytest.raises(LockTimeout),
        registry_lock(c, settings.registered_model, timeout_s=0.5),
    ):
        pass
    with registry_lock(c, settings.registered_model, timeout_s=1):
        pass  # released


def test_approval_refuses_reviewers_who_may_not_decide_and_records_it(store) -> None:
    """Self-approval and a blank reviewer are ReviewerRefused (the run asks again); a moved champion is not."""
    settings, c = store
    name = settings.registered_model
    v1, v2 = new_version(settings, c, True), new_version(settings, c, True)
    for reviewer in ("alice", "  "):
        with pytest.raises(ReviewerRefused):
            approve(c, name, v1, reviewer=reviewer, started_by="alice@plant", seen_champion=None)
    with pytest.raises(ReviewerRefused):
        reject(c, name, v1, reviewer="alice", started_by="alice@plant")
    assert alias_version(c, name, CHAMPION) is None
    approve(c, name, v1, reviewer="bob", started_by="alice@plant", seen_champion=None)
    with pytest.raises(PromotionRefused) as refused:  # champion moved to v1 since the run compared with None
        approve(c, name, v2, reviewer="bob", started_by="alice@plant", seen_champion=None)
    assert not isinstance(refused.value, ReviewerRefused)
    actions = [e["action"] for e in history(c, name) if e.get("alias") == CHAMPION]
    assert actions == ["approve-refused", "approve-refused", "reject-refused", "approve", "approve-refused"]
    assert alias_version(c, name, CHAMPION) == v1


def _dead_pid() -> int:
    proc = mp.get_context("spawn").Process(target=os.getpid)
    proc.start()
    proc.join()
    return proc.pid


def test_a_lock_whose_holder_is_gone_is_broken_at_once(store) -> None:
    """A lock left behind when the tracking server went away (its release failed): the next attempt on this host
    breaks it at once, whether a dead process or this one left it, instead of waiting lock_timeout_s and failing; a
    lock of another host waits (and expires after STALE_LOCK_S)."""
    settings, c = store
    name = settings.registered_model
    ensure_registered_model(c, name)
    tags = {"owner": "someone", "host": socket.gethostname(), "acquired_at": str(time.time())}
    for pid in (_dead_pid(), os.getpid()):
        c.create_registered_model(f"{name}{LOCK_SUFFIX}", tags={**tags, "pid": str(pid)})
        with registry_lock(c, name, timeout_s=1.0):
            pass
    c.create_registered_model(f"{name}{LOCK_SUFFIX}", tags={**tags, "host": "another-host", "pid": "1"})
    with pytest.raises(LockTimeout, match="run again once it is released"), registry_lock(c, name, timeout_s=0.5):
        pass


def test_a_retry_records_the_register_event_a_cut_off_registration_missed(store) -> None:
    """The server went away after creating the version (with all its tags, in one call) and before its audit event:
    the retry that finds the version records the event, once."""
    settings, c = store
    name = settings.registered_model
    ensure_registered_model(c, name)
    with mlflow.start_run() as run:
        mlflow.log_dict({}, "model/info.json")
        uri = f"runs:/{run.info.run_id}/model"
        cut_off = c.create_model_version(name, source=uri, run_id=run.info.run_id, tags={"gates_passed": "true"})
        again, created = register_version(c, name, uri, run.info.run_id, {"gates_passed": "true"})
        register_version(c, name, uri, run.info.run_id, {"gates_passed": "true"})
    assert not created and again.version == cut_off.version
    events = [e for e in history(c, name) if e["action"] == "register"]
    assert [e["to_version"] for e in events] == [str(cut_off.version)] and "recorded by a retry" in events[0]["reason"]
