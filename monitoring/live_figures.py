"""What the reviewed labels say about the model: live precision and recall per class, and the missed criticals.

Pure functions over the reviewed records (``done/<sha256>.json`` of ``monitoring/review_labels.py``): each holds
the people's class (``reviewed_as``) and the model's guess when the image was queued (``predicted``), with the
monitoring run that queued it (``monitoring_run``). A record's model version is its own ``model_version`` when it
has one, else the version the monitoring run scored with (``run_versions``: run id -> version, from the monitoring
history). Records a training run queued (``training_run``: its validation and test images picked as suspected label
errors or confident mistakes) are not images from the line, and were picked because the model disagreed with the
data: they count in neither the live figures nor the missed criticals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def record_version(record: Mapping[str, Any], run_versions: Mapping[str, str] | None = None) -> str | None:
    """The model version that made the record's guess, or None when unknown."""
    if record.get("model_version") is not None:
        return str(record["model_version"])
    version = (run_versions or {}).get(str(record.get("monitoring_run")))
    return None if version is None else str(version)


def is_live(record: Mapping[str, Any]) -> bool:
    """Whether the record's guess was made on an image from the line (not queued by a training run)."""
    return record.get("training_run") is None


def is_missed_critical(record: Mapping[str, Any], critical: str) -> bool:
    """True when people labelled an image from the line ``critical`` but the model's recorded guess was another
    class."""
    guess = record.get("predicted")
    return is_live(record) and record.get("reviewed_as") == critical and guess is not None and guess != critical


def live_figures(
    records: Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    critical: str,
    version: str | None = None,
    run_versions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Precision, recall and support per class of the reviewed ``records`` that have a label and a recorded guess
    (only those of model ``version`` when given; never those a training run queued, :func:`is_live`);
    ``missed_critical``: those labelled ``critical`` that the model guessed as something else. A ratio with nothing
    to divide by is None."""
    kept = [
        r
        for r in records
        if is_live(r)
        and r.get("reviewed_as") is not None
        and r.get("predicted") is not None
        and (version is None or record_version(r, run_versions) == str(version))
    ]
    pairs = [(str(r["reviewed_as"]), str(r["predicted"])) for r in kept]
    rows = []
    for name in class_names:
        hits = sum(1 for label, guess in pairs if label == guess == name)
        support = sum(1 for label, _ in pairs if label == name)
        guessed = sum(1 for _, guess in pairs if guess == name)
        rows.append({
            "class": name,
            "precision": hits / guessed if guessed else None,
            "recall": hits / support if support else None,
            "support": support,
            "predicted": guessed,
        })  # fmt: skip
    missed = [
        {
            "sha256": r.get("sha256"),
            "predicted": r.get("predicted"),
            "reviewed_as": r.get("reviewed_as"),
            "model_version": record_version(r, run_versions),
            "reviewed_image": r.get("reviewed_image"),
            "reviewed_at": r.get("reviewed_at"),
        }
        for r in kept
        if is_missed_critical(r, critical)
    ]
    return {"model_version": version, "n_reviewed": len(kept), "classes": rows, "missed_critical": missed}


__all__ = ["is_live", "is_missed_critical", "live_figures", "record_version"]
