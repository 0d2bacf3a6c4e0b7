"""`registry approve` waits for the audit event the resumed run writes: model_registry.approval.wait_for_decision."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from mlflow.exceptions import MlflowException

from steelqc.model_registry.approval import wait_for_decision
from steelqc.model_registry.promotion import AUDIT_PREFIX

RUN = "6f1c1c9e-0000-4000-8000-000000000001"


class FakeClient:
    """The one call promotion.history makes: get_registered_model(name).tags."""

    def __init__(self, events: list[dict] | None = None) -> None:
        self.tags: dict[str, str] = {}
        self.exists = events is not None
        for event in events or []:
            self.add(event)

    def add(self, event: dict) -> None:
        self.exists = True
        self.tags[f"{AUDIT_PREFIX}{event['seq']:08d}"] = json.dumps(event)

    def get_registered_model(self, name: str) -> SimpleNamespace:
        if not self.exists:
            raise MlflowException(f"registered model {name} not found")
        return SimpleNamespace(tags=dict(self.tags))


def test_returns_the_new_event_of_that_run_and_ignores_old_and_other_runs() -> None:
    old = {"seq": 1, "action": "approve-refused", "flow_run_id": RUN}
    client = FakeClient([old])
    script = iter(
        [
            {"seq": 2, "action": "approve", "flow_run_id": "another-run"},
            {"seq": 3, "action": "approve", "flow_run_id": RUN, "actor": "jane"},
        ]
    )
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the run records one event while we wait
        sleeps.append(seconds)
        client.add(next(script))

    event = wait_for_decision(client, "m", RUN, {1}, timeout_s=60, poll_s=0.01, sleep=sleep)
    assert event is not None and event["seq"] == 3 and event["actor"] == "jane"
    assert sleeps == [0.01, 0.01]


def test_an_event_already_there_is_returned_without_waiting() -> None:
    client = FakeClient([{"seq": 4, "action": "reject", "flow_run_id": RUN}])
    event = wait_for_decision(client, "m", RUN, set(), timeout_s=0, sleep=lambda s: None)
    assert event is not None and event["action"] == "reject"


def test_none_after_the_timeout_also_without_a_registered_model() -> None:
    for client in (FakeClient(None), FakeClient([{"seq": 1, "action": "approve", "flow_run_id": RUN}])):
        sleeps: list[float] = []

        def sleep(seconds: float, sleeps: list[float] = sleeps) -> None:
            sleeps.append(seconds)
            time.sleep(seconds)

        assert wait_for_decision(client, "m", RUN, {1}, timeout_s=0.05, poll_s=0.01, sleep=sleep) is None
        assert 1 <= len(sleeps) <= 6, "it polled every poll_s until the timeout"
