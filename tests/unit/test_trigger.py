"""The retrain decision table (monitoring/trigger.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from steelqc.monitoring.trigger import decide_retrain

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HOUR = 3600
CHAMP, NEW = "a" * 64, "b" * 64


def decide(**kwargs):
    base = dict(
        drift_detected=True,
        last_trigger=None,
        now=NOW,
        cooldown_s=12 * HOUR,
        nightly_fingerprint=NEW,
        champion_fingerprint=CHAMP,
        retrain_without_new_labels=False,
    )
    return decide_retrain(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "action"),
    [
        ({"drift_detected": False}, "none"),
        ({"drift_detected": False, "nightly_fingerprint": CHAMP}, "none"),
        ({}, "start"),
        ({"last_trigger": NOW - timedelta(hours=13)}, "start"),
        ({"last_trigger": NOW - timedelta(hours=12)}, "start"),  # the cool-down has just ended
        ({"last_trigger": NOW - timedelta(hours=11, minutes=59)}, "skip-cooldown"),
        ({"last_trigger": NOW - timedelta(seconds=5)}, "skip-cooldown"),
        ({"last_trigger": NOW + timedelta(seconds=5)}, "skip-cooldown"),  # a clock a little ahead elsewhere
        ({"last_trigger": NOW - timedelta(seconds=5), "nightly_fingerprint": CHAMP}, "skip-cooldown"),
        ({"last_trigger": NOW - timedelta(seconds=5), "cooldown_s": 0}, "start"),
        ({"nightly_fingerprint": CHAMP}, "ask-for-labels"),
        ({"nightly_fingerprint": None}, "ask-for-labels"),
        ({"nightly_fingerprint": CHAMP, "retrain_without_new_labels": True}, "start"),
        ({"nightly_fingerprint": None, "retrain_without_new_labels": True}, "start"),
        ({"champion_fingerprint": None}, "start"),  # a champion without the tag: new data cannot be ruled out
    ],
)
def test_decision_table(kwargs: dict, action: str) -> None:
    decision = decide(**kwargs)
    assert decision.action == action, decision
    assert decision.start == (action == "start")
    assert decision.reason


def test_reasons_say_why() -> None:
    assert "cool-down" in decide(last_trigger=NOW - timedelta(hours=1)).reason
    assert "2026-12-05T23:00:00" in decide(last_trigger=NOW - timedelta(hours=1)).reason  # when it ends
    labels = decide(nightly_fingerprint=CHAMP).reason
    assert "trained on" in labels and "label" in labels
    assert "no labelled images" in decide(nightly_fingerprint=None).reason
    assert "retrain_without_new_labels" in decide(nightly_fingerprint=CHAMP, retrain_without_new_labels=True).reason
    assert decide(drift_detected=False).reason == "no drift"
