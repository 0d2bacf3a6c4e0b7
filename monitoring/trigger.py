"""The retrain decision after a drift check: start a retrain, hold it for the cool-down, or ask for labels.

Pure: the caller reads the last drift-triggered retrain (MLflow, :mod:`steelqc.monitoring.monitor`), the nightly
data's fingerprint and the champion's ``fingerprint`` tag, and acts on the returned :class:`RetrainDecision`.

Order of the rules: no drift → ``none``; a drift-triggered retrain less than ``cooldown_s`` ago →
``skip-cooldown`` (a drifting line must not start a storm of retrains); the nightly data is what the champion was
trained on (same fingerprint), or there is no labelled nightly data → ``ask-for-labels`` (a retrain would rebuild
the same model) unless ``retrain_without_new_labels``; otherwise ``start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Action = Literal["none", "start", "skip-cooldown", "ask-for-labels"]
ACTIONS: tuple[Action, ...] = ("none", "start", "skip-cooldown", "ask-for-labels")


@dataclass(frozen=True)
class RetrainDecision:
    """What to do after a drift check, and why (``reason`` is one sentence for people and MLflow)."""

    action: Action
    reason: str

    @property
    def start(self) -> bool:
        return self.action == "start"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def decide_retrain(
    *,
    drift_detected: bool,
    last_trigger: datetime | None,
    now: datetime,
    cooldown_s: float,
    nightly_fingerprint: str | None,
    champion_fingerprint: str | None,
    retrain_without_new_labels: bool = False,
) -> RetrainDecision:
    """The retrain decision (see the module docstring). ``last_trigger`` and ``now`` must both be timezone-aware
    (or both naive); ``nightly_fingerprint`` is None when the nightly data folder holds no usable labelled data."""
    if not drift_detected:
        return RetrainDecision("none", "no drift")
    if last_trigger is not None:
        elapsed = (now - last_trigger).total_seconds()
        if elapsed < cooldown_s:
            until = last_trigger + timedelta(seconds=cooldown_s)
            return RetrainDecision(
                "skip-cooldown",
                f"a drift-triggered retrain started {_ago(max(elapsed, 0.0))} ago, within the cool-down of "
                f"{_ago(cooldown_s)}: no new retrain before {until.isoformat(timespec='seconds')}",
            )
    if nightly_fingerprint is None:
        no_labels = "the nightly data holds no labelled images"
    elif champion_fingerprint is not None and nightly_fingerprint == champion_fingerprint:
        no_labels = f"the nightly data is what the champion was trained on (fingerprint {nightly_fingerprint[:12]})"
    else:
        no_labels = None
    if no_labels is None:
        return RetrainDecision("start", "drift and new labelled data in the nightly data: retrain started")
    if retrain_without_new_labels:
        return RetrainDecision("start", f"{no_labels}; retraining anyway (retrain_without_new_labels)")
    return RetrainDecision(
        "ask-for-labels", f"{no_labels}: a retrain would rebuild the same model; label the review queue's images"
    )
