"""Shadow comparison: the challenger and the champion on the images people reviewed at the line.

Reviewed images (``done/<sha256>.json`` records of ``monitoring/review_labels.py``) are ground truth from production.
Before an ML lead approves a challenger, both models score the same reviewed images now (the same code path and
each model's own calibrated critical threshold), and :func:`shadow_comparison` sets their live precision and recall
per class side by side, with the criticals each one misses and the images on which they disagree.

:func:`reviewed_frame` picks the images (newest reviewed first, at most ``limit``, only those whose file is still
there); :func:`score_labels` runs a loaded model on them; :func:`shadow_comparison` is pure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from steelqc.model_registry.packaging import SteelDefectModel
from steelqc.monitoring.live_figures import is_live, live_figures

log = logging.getLogger(__name__)

FRAME_COLUMNS = ("sha256", "path", "reviewed_as", "reviewed_at")


def reviewed_frame(records: Sequence[Mapping[str, Any]], limit: int) -> pd.DataFrame:
    """The reviewed images from the line to score: ``sha256``, ``path`` (the image in the ``reviewed`` source),
    ``reviewed_as`` and ``reviewed_at``; newest reviewed first, at most ``limit``. Left out: records whose image file
    is gone, and images a training run queued (its own validation and test images, not images from the line)."""
    rows = [
        {
            "sha256": str(r.get("sha256")),
            "path": str(r.get("reviewed_image")),
            "reviewed_as": str(r.get("reviewed_as")),
            "reviewed_at": str(r.get("reviewed_at") or ""),
        }
        for r in records
        if is_live(r)
        and r.get("reviewed_as")
        and r.get("reviewed_image")
        and Path(str(r.get("reviewed_image"))).is_file()
    ]
    frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    frame = frame.sort_values(["reviewed_at", "sha256"], ascending=[False, True], kind="stable")
    return frame.head(max(limit, 0)).reset_index(drop=True)


def score_labels(model: SteelDefectModel, frame: pd.DataFrame) -> list[str]:
    """The class each image of ``frame`` is given by ``model`` (its decision rule, calibrated threshold included)."""
    if frame.empty:
        return []
    records = model.predict(None, frame.assign(image_id=frame["sha256"])[["image_id", "path"]])
    return [str(label) for label in records["label"]]


def _side(
    frame: pd.DataFrame, labels: Sequence[str], version: str | None, class_names: Sequence[str], critical: str
) -> dict[str, Any]:
    """One model's live figures on the reviewed images (:func:`live_figures` of records it guessed now)."""
    records = [
        {"sha256": sha, "reviewed_as": truth, "predicted": guess, "reviewed_image": path}
        for sha, truth, guess, path in zip(frame["sha256"], frame["reviewed_as"], labels, frame["path"], strict=True)
    ]
    figures = live_figures(records, class_names, critical)
    hits = sum(1 for r in records if r["reviewed_as"] == r["predicted"])
    return {
        "version": version,
        "accuracy": hits / len(records) if records else None,
        "classes": figures["classes"],
        "missed_critical": len(figures["missed_critical"]),
    }


def shadow_comparison(
    frame: pd.DataFrame,
    challenger: Sequence[str],
    champion: Sequence[str] | None,
    class_names: Sequence[str],
    critical: str,
    *,
    challenger_version: str | None = None,
    champion_version: str | None = None,
    max_listed: int = 20,
) -> dict[str, Any]:
    """The two models side by side on the reviewed images of ``frame`` (:func:`reviewed_frame`): each one's
    precision, recall and support per class, accuracy and missed criticals; ``disagreements`` (up to ``max_listed``
    images where they decide differently, with the people's class) and their count. ``champion`` None: there is no
    champion to compare with (its side is None)."""
    if len(challenger) != len(frame) or (champion is not None and len(champion) != len(frame)):
        raise ValueError("shadow_comparison: one label per reviewed image is expected from each model")
    out: dict[str, Any] = {
        "n_images": len(frame),
        "critical": critical,
        "challenger": _side(frame, challenger, challenger_version, class_names, critical),
        "champion": None,
        "n_disagree": 0,
        "disagreements": [],
    }
    if champion is None:
        return out
    out["champion"] = _side(frame, champion, champion_version, class_names, critical)
    differ = [i for i, (a, b) in enumerate(zip(challenger, champion, strict=True)) if a != b]
    out["n_disagree"] = len(differ)
    out["disagreements"] = [
        {
            "sha256": frame.at[i, "sha256"],
            "image": frame.at[i, "path"],
            "reviewed_as": frame.at[i, "reviewed_as"],
            "champion": champion[i],
            "challenger": challenger[i],
        }
        for i in differ[:max_listed]
    ]
    return out


__all__ = ["reviewed_frame", "score_labels", "shadow_comparison"]
