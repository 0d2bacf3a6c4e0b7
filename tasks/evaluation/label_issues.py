"""Review candidates of a training run: evaluated images whose given label people should look at again.

From the out-of-sample class probabilities of a run's evaluated images (its validation and test splits; the model
never trained on them), two kinds of candidates, each capped:

* ``suspected-label-error``: cleanlab's :func:`cleanlab.filter.find_label_issues` (confident learning: a class's
  threshold is the mean probability of that class over the images labelled with it; an image counts as probably
  class j when its probability of j reaches j's threshold and j is the most probable of the classes that do; the
  counts of images labelled i but probably j estimate how many images of label i are really j, and that many of
  them, those with the largest margin ``p_j - p_i``, are flagged), ranked by self-confidence (the probability of
  the given label, lowest first);
* ``confident-mistake``: the misclassified images (argmax other than the given label) whose wrong class got the
  highest probability (:func:`~steelqc.tasks.evaluation.metrics.most_confident_mistakes`).

Confident learning needs images of at least two classes; a class without an evaluated image can be neither a
given label nor a suggested one (cleanlab never flags an image as probably belonging to it), and with only a few
images of a class cleanlab keeps them all and flags none of them: the confident mistakes still cover those.

The evaluation writes every evaluated image with its probabilities (:data:`PROBABILITIES_FILE`, columns
:data:`ROW_COLUMNS` then ``proba:<class>`` per output index, :func:`probability_frame`); the training flow reads it
back (:func:`read_probabilities`) and queues :func:`review_candidates`. Pure functions but the two file helpers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from steelqc.tasks.evaluation.metrics import most_confident_mistakes

log = logging.getLogger(__name__)

SUSPECTED_LABEL_ERROR = "suspected-label-error"
CONFIDENT_MISTAKE = "confident-mistake"
PROBABILITIES_FILE = "probabilities.csv"
"""Every evaluated image (validation and test) with its class probabilities, in the run folder's ``evaluation/``."""
CANDIDATES_FILE = "review_candidates.csv"
"""The candidates the training run queued for review, in the run folder's ``evaluation/``."""
PROBA_PREFIX = "proba:"
ROW_COLUMNS = ("image_id", "path", "sha256", "split", "label", "label_index")
"""An evaluated image: its id, file, content hash, split (``val`` or ``test``), given class name and its output
index."""
CANDIDATE_COLUMNS = (
    "uri",
    "sha256",
    "image_id",
    "split",
    "label",
    "predicted",
    "confidence",
    "critical_proba",
    "reasons",
    "novel",
)


@dataclass(frozen=True)
class Candidates:
    """The review candidates (``frame``, columns :data:`CANDIDATE_COLUMNS`, one row per image) and ``notes``: why
    cleanlab was skipped, or what limited it (each also logged)."""

    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def suspected_label_errors(
    labels: np.ndarray, proba: np.ndarray, n: int, class_names: Sequence[str] | None = None
) -> tuple[list[int], list[str]]:
    """Indices of at most ``n`` suspected label errors (cleanlab, ranked by self-confidence, most suspect first) and
    the notes: why cleanlab was not run (no image, one class only, probabilities that are not finite, cleanlab
    failing; nothing when ``n`` is 0) or the classes it could not judge. Never raises on data it cannot use.

    ``labels``: output indices (n,); ``proba``: n x classes; ``class_names`` name the classes in the notes."""
    labels = np.asarray(labels, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if n <= 0:
        return [], []
    if len(labels) == 0:
        return [], ["label issues: no evaluated image, cleanlab not run"]
    present = np.unique(labels)
    name = (lambda k: str(class_names[k])) if class_names is not None else str
    if len(present) < 2:
        only = name(int(present[0]))
        return [], [f"label issues: every evaluated image is labelled {only}; cleanlab needs two classes, not run"]
    if proba.ndim != 2 or proba.shape[0] != len(labels) or not np.isfinite(proba).all():
        return [], ["label issues: the probabilities are not a finite n x classes array; cleanlab not run"]
    from cleanlab.filter import find_label_issues  # noqa: PLC0415  (cleanlab imports scikit-learn: only when needed)

    notes = []
    absent = sorted(set(range(proba.shape[1])) - {int(c) for c in present})
    if absent:
        listed = ", ".join(name(k) for k in absent)
        notes.append(
            f"label issues: no evaluated image of {listed}; cleanlab never suggests a class it has no image of"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = find_label_issues(
                labels, np.clip(proba, 0.0, 1.0), return_indices_ranked_by="self_confidence", n_jobs=1
            )
    except Exception as exc:  # a third-party estimate on a side path: it must not fail the run
        return [], [f"label issues: cleanlab failed ({type(exc).__name__}: {exc}); none suggested"]
    warned = {_warned_class(str(w.message)) for w in caught if "too few" in str(w.message)}
    few = sorted(k for k in warned if k is not None and k not in absent and k < proba.shape[1])
    if few:
        listed = ", ".join(name(k) for k in few)
        notes.append(f"label issues: too few evaluated images of {listed} for cleanlab to flag all their issues")
    return [int(i) for i in np.asarray(found)[:n]], notes


def _warned_class(message: str) -> int | None:
    """The class index of cleanlab's "May not flag all label issues in class: K, it has too few examples"."""
    text = message.split("class:", 1)[-1].split(",", 1)[0].strip()
    return int(text) if text.isdigit() else None


def confident_mistakes(labels: np.ndarray, proba: np.ndarray, n: int) -> list[int]:
    """Indices of at most ``n`` misclassified images (argmax other than the label), highest probability of the
    wrong class first (ties: lower index first)."""
    if n <= 0 or len(labels) == 0:
        return []
    proba = np.asarray(proba, dtype=np.float64)
    return most_confident_mistakes(np.asarray(labels), np.argmax(proba, axis=1), proba, n=n)


def review_candidates(
    rows: pd.DataFrame,
    proba: np.ndarray,
    class_names: Sequence[str],
    critical: str,
    *,
    label_issues: int,
    mistakes: int,
) -> Candidates:
    """The evaluated ``rows`` (columns :data:`ROW_COLUMNS`, ``label_index`` an output index of ``class_names``) to
    queue for review, with ``proba`` their out-of-sample probabilities (n x classes, output order).

    At most ``label_issues`` suspected label errors and ``mistakes`` confident mistakes (0 turns either off); an
    image picked by both is one row with both reasons. Rows: the suspected label errors in cleanlab's order, then
    the other confident mistakes in theirs. Columns :data:`CANDIDATE_COLUMNS`: ``uri`` the image's path,
    ``label`` the class the data gives, ``predicted`` the argmax class, ``confidence`` its probability,
    ``critical_proba`` the probability of ``critical``, ``reasons`` a list, ``novel`` False.
    """
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"review candidates: rows lack columns {missing}")
    names = list(class_names)
    proba = np.asarray(proba, dtype=np.float64).reshape(len(rows), len(names))
    rows = rows.reset_index(drop=True)
    labels = rows["label_index"].to_numpy(dtype=np.int64)
    suspects, notes = suspected_label_errors(labels, proba, label_issues, names)
    picked: dict[int, list[str]] = {int(i): [SUSPECTED_LABEL_ERROR] for i in suspects}
    for i in confident_mistakes(labels, proba, mistakes):
        picked.setdefault(int(i), []).append(CONFIDENT_MISTAKE)
    for note in notes:
        log.info("%s", note)
    order = list(picked)
    argmax = np.argmax(proba, axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    frame = pd.DataFrame(
        {
            "uri": rows.loc[order, "path"].astype(str).to_numpy(),
            "sha256": rows.loc[order, "sha256"].astype(str).to_numpy(),
            "image_id": rows.loc[order, "image_id"].astype(str).to_numpy(),
            "split": rows.loc[order, "split"].astype(str).to_numpy(),
            "label": [names[labels[i]] for i in order],
            "predicted": [names[argmax[i]] for i in order],
            "confidence": [float(proba[i, argmax[i]]) for i in order],
            "critical_proba": [float(proba[i, names.index(critical)]) for i in order],
            "reasons": pd.Series([picked[i] for i in order], dtype=object),
            "novel": [False] * len(order),
        },
        columns=list(CANDIDATE_COLUMNS),
    )
    return Candidates(frame, notes)


# ------------------------------------------------------------------------------------------------ files


def probability_frame(rows: pd.DataFrame, proba: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """``rows`` (columns :data:`ROW_COLUMNS`) with one ``proba:<class>`` column per output index: the content of
    :data:`PROBABILITIES_FILE`."""
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"probabilities: rows lack columns {missing}")
    proba = np.asarray(proba, dtype=np.float64).reshape(len(rows), len(class_names))
    columns = {f"{PROBA_PREFIX}{name}": proba[:, k] for k, name in enumerate(class_names)}
    return pd.concat([rows[list(ROW_COLUMNS)].reset_index(drop=True), pd.DataFrame(columns)], axis=1)


def read_probabilities(path: Path) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """``(rows, proba, class_names)`` from a :data:`PROBABILITIES_FILE` (:func:`probability_frame`'s layout)."""
    frame = pd.read_csv(path, dtype={"image_id": str, "path": str, "sha256": str, "split": str, "label": str})
    proba_columns = [c for c in frame.columns if c.startswith(PROBA_PREFIX)]
    missing = [c for c in ROW_COLUMNS if c not in frame.columns]
    if missing or not proba_columns:
        raise ValueError(f"{path}: not a probabilities file (missing {missing or 'proba: columns'})")
    names = [c[len(PROBA_PREFIX) :] for c in proba_columns]
    return frame[list(ROW_COLUMNS)], frame[proba_columns].to_numpy(dtype=np.float64), names


__all__ = [
    "CANDIDATES_FILE",
    "CANDIDATE_COLUMNS",
    "CONFIDENT_MISTAKE",
    "PROBABILITIES_FILE",
    "ROW_COLUMNS",
    "SUSPECTED_LABEL_ERROR",
    "Candidates",
    "confident_mistakes",
    "probability_frame",
    "read_probabilities",
    "review_candidates",
    "suspected_label_errors",
]
