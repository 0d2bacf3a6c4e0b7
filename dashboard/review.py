"""What the dashboard's *Review* page reads and does: the review queue the drift monitor and training runs fill
(``monitoring/review.py``), one image at a time with the model's guess, and one-click labels.

Plain functions over a :class:`~steelqc.monitoring.review_labels.LabelDesk`, testable without Streamlit. A label
goes through :meth:`LabelDesk.apply` with a :class:`LabelRow`, exactly as `steelqc review label` does (votes,
disputes, the locked move into ``STEELQC_HOME/reviewed/<class>/``): no second implementation here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steelqc.monitoring.review_labels import LabelDesk, LabelRow, default_reviewer, summary_of
from steelqc.tasks.config import Settings
from steelqc.tasks.data.imageio import read_regular_file

log = logging.getLogger(__name__)

GUESS_KEYS = ("predicted", "confidence", "critical_proba", "novelty")
"""What a queue entry records of the model's guess (``monitoring/review.py``)."""


@dataclass(frozen=True)
class QueueView:
    """The queue as the page shows it: ``counts`` (queued, disputed, reviewed), ``pending`` (the undisputed queued
    entries the reviewer has not voted on, oldest first) and ``disputed`` (entries whose votes differ)."""

    counts: dict[str, int]
    pending: list[dict[str, Any]] = field(default_factory=list)
    disputed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def current(self) -> dict[str, Any] | None:
        """The image to label next (None when nothing waits)."""
        return self.pending[0] if self.pending else None


@dataclass(frozen=True)
class Outcome:
    """What a label did: ``status`` (``reviewed``, ``disputed`` or ``queued``: waiting for more votes) and a line
    for people."""

    sha256: str
    status: str
    message: str
    entry: dict[str, Any]


def open_desk(settings: Settings) -> LabelDesk:
    """The settings' local review queue (a :class:`~steelqc.monitoring.review_labels.LabelError` for an S3 one)."""
    return LabelDesk.open(settings)


def class_choices(settings: Settings) -> list[str]:
    """The settings' class names in id order: one button each."""
    return [name for _, name in sorted(settings.class_names.items())]


def reviewer_name(given: str | None) -> str:
    """The reviewer: ``given`` stripped, else the OS user (as `steelqc review label`)."""
    return (given or "").strip() or default_reviewer()


def queue_view(desk: LabelDesk, reviewer: str | None = None) -> QueueView:
    """The queue's counts, the undisputed entries waiting for ``reviewer`` (those they voted on already are
    skipped: they wait for other reviewers) and the disputed entries."""
    queued = list(desk.queued().values())
    name = reviewer_name(reviewer)
    pending = [e for e in queued if not e.get("disputed") and name not in (e.get("votes") or {})]
    disputed = [e for e in queued if e.get("disputed")]
    return QueueView(desk.counts(), pending, disputed)


def guess(entry: dict[str, Any]) -> dict[str, Any]:
    """The model's guess the entry recorded (predicted class, confidence, critical probability, novelty when
    known), missing values left out."""
    return {k: entry[k] for k in GUESS_KEYS if entry.get(k) is not None}


def describe(entry: dict[str, Any]) -> str:
    """One line for people: why the image was queued, the class the data gives (an image a training run queued),
    the guess and the votes so far."""
    reasons = ", ".join(entry.get("reasons") or []) or "no reason recorded"
    parts = [f"queued for: {reasons}"]
    if entry.get("training_run"):
        split = f" ({entry['split']} image of training run {entry['training_run']})" if entry.get("split") else ""
        parts.append(f"labelled {entry.get('label')} in the data{split}")
    g = guess(entry)
    if "predicted" in g:
        confidence = f" (confidence {g['confidence']:.3f})" if isinstance(g.get("confidence"), int | float) else ""
        parts.append(f"model's guess: {g['predicted']}{confidence}")
    if isinstance(g.get("critical_proba"), int | float):
        parts.append(f"P(critical) {g['critical_proba']:.3f}")
    votes = entry.get("votes") or {}
    if votes:
        parts.append("votes: " + ", ".join(f"{who}: {label}" for who, label in sorted(votes.items())))
    return "; ".join(parts)


def image_bytes(entry: dict[str, Any], max_bytes: int) -> bytes | None:
    """The queued image's bytes (a regular local file, at most ``max_bytes``), None when it cannot be read."""
    path = Path(str(entry.get("image")))
    try:
        data = read_regular_file(path, max_bytes)
    except OSError as exc:
        log.warning("review: cannot read the queued image %s (%s)", path, exc)
        return None
    return data if len(data) <= max_bytes else None


def outcome_of(entry: dict[str, Any], votes_needed: int) -> Outcome:
    """The outcome of a labelled entry (as :meth:`LabelDesk.apply` returned it)."""
    summary = summary_of(entry)
    sha, status = str(entry["sha256"]), summary["status"]
    short = sha[:12]
    if status == "reviewed":
        message = f"{short} reviewed as {entry['reviewed_as']}: moved to {entry.get('reviewed_image')}"
    elif status == "disputed":
        votes = ", ".join(f"{who}: {label}" for who, label in sorted(summary["votes"].items()))
        message = f"{short} is disputed (votes differ: {votes}); it waits until the reviewers agree"
    else:
        message = f"{short}: {len(summary['votes'])} of {votes_needed} agreeing votes, waiting for more votes"
    return Outcome(sha, status, message, summary)


def label(desk: LabelDesk, sha256: str, label_name: str, reviewer: str | None = None) -> Outcome:
    """Label the queued image ``sha256`` as `steelqc review label` does (:meth:`LabelDesk.apply`, under the
    queue's lock); a :class:`~steelqc.monitoring.review_labels.LabelError` for an unknown class or an image no
    longer queued (labelled meanwhile by someone else)."""
    [entry] = desk.apply([LabelRow(sha256, label_name, reviewer_name(reviewer))])
    return outcome_of(entry, desk.settings.review_votes)


__all__ = [
    "Outcome",
    "QueueView",
    "class_choices",
    "describe",
    "guess",
    "image_bytes",
    "label",
    "open_desk",
    "outcome_of",
    "queue_view",
    "reviewer_name",
]
