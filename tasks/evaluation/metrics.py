"""Evaluation: the safety-first decision rule, threshold calibration, metrics, bootstrap intervals and plots.

Framework-free: numpy arrays in, plain Python values (JSON-serialisable: floats, ints, lists, ``None``) out.
Class indices are model *output* indices (``class_names[i]`` names index ``i``; see
:class:`steelqc.tasks.data.labels.LabelSpace`).

Conventions (the ``metrics`` block of README "The training pipeline", Evaluation):

* Decisions come from :func:`decide`: the critical class is predicted when its probability reaches the threshold,
  otherwise the most probable *other* class; no threshold means plain argmax.
* A class with no support (no true sample) has ``None`` precision, recall and F1 and is left out of every macro
  average. If such a class is nevertheless *predicted*, those predictions are still errors: they lower the recall
  of the true classes of those samples and the accuracy, but they count in no macro figure.
* A class with support but never predicted has precision 0 (sklearn's ``zero_division=0``), so F1 = 0.
* ``micro_f1`` pools every class (predictions of unsupported classes included); for single-label data it equals
  ``accuracy``.
* ROC-AUC is one-vs-rest on the probabilities (not on the decisions): a class counts when it has at least one
  positive and one negative; ``roc_auc_macro`` is the mean over those classes, ``roc_auc_micro`` the AUC of the
  flattened one-hot labels against the flattened probabilities; ``None`` when not computable.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_BOOT_CHUNK_ELEMENTS = 4_000_000  # resample indices drawn per chunk (n_boot x N int64), bounds memory


# ----------------------------------------------------------------------------------------------- validation


def _as_labels(y: np.ndarray, n_classes: int | None = None, name: str = "y") -> np.ndarray:
    """1-D int64 array of output indices, checked against ``n_classes`` when given."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer) and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{name} must hold integer class indices")
    arr = arr.astype(np.int64, copy=False)
    if n_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(f"{name} holds indices outside 0..{n_classes - 1}")
    return arr


def _as_proba(proba: np.ndarray) -> np.ndarray:
    arr = np.asarray(proba, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"proba must be 2-D (N x C), got shape {arr.shape}")
    return arr


def _check_critical(critical_index: int, n_classes: int) -> int:
    if not 0 <= int(critical_index) < n_classes:
        raise ValueError(f"critical_index {critical_index} outside 0..{n_classes - 1}")
    return int(critical_index)


def _float_or_none(value: float | None) -> float | None:
    """Plain Python float, or None for None / NaN."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# ----------------------------------------------------------------------------------------------- decision


def decide(proba: np.ndarray, critical_index: int, threshold: float | None) -> np.ndarray:
    """Safety-first decision: the critical class when ``proba[:, critical] >= threshold``, else the most probable
    other class; ``threshold=None`` is plain argmax. Returns int64 output indices (N,)."""
    proba = _as_proba(proba)
    critical_index = _check_critical(critical_index, proba.shape[1])
    if threshold is None or proba.shape[1] == 1:
        return np.argmax(proba, axis=1).astype(np.int64)
    others = proba.copy()
    others[:, critical_index] = -np.inf
    pred = np.argmax(others, axis=1).astype(np.int64)
    pred[proba[:, critical_index] >= float(threshold)] = critical_index
    return pred


def calibrate_threshold(
    y_true: np.ndarray, proba: np.ndarray, critical_index: int, target_recall: float = 0.95
) -> dict:
    """Choose the critical threshold on validation data (run it on the validation split, never on test).

    Candidates are the distinct critical probabilities of the data; under :func:`decide` a sample is predicted
    critical iff its critical probability ``>= t``. Among candidates whose critical recall reaches
    ``target_recall``, take the best critical precision; ties go to the lowest ``t`` (the most critical samples
    caught at that precision: on well-separated validation data every ``t`` between the other classes' highest
    and the critical class' lowest probability has precision 1, and taking the highest would give up to
    ``1 - target_recall`` of the critical samples away for nothing). The
    returned threshold is the middle of the gap between that probability and the next lower one (same validation
    decisions, a margin for unseen data); ``edge_threshold`` is the probability itself.
    The lowest candidate predicts every sample critical (recall 1), so with at least one critical sample the
    target is always reachable.

    Fallback: with no critical sample in ``y_true`` (or no data) nothing can be calibrated; the result is
    ``threshold=0.5``, ``achieved=False``, ``recall``/``precision`` None and a ``reason``.

    Returns ``{"threshold", "target_recall", "recall", "precision", "achieved", "n_critical", "reason"}``
    (``reason`` is None when calibration succeeded).
    """
    if not 0.0 < float(target_recall) <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    proba = _as_proba(proba)
    critical_index = _check_critical(critical_index, proba.shape[1])
    y_true = _as_labels(y_true, proba.shape[1], "y_true")
    if y_true.shape[0] != proba.shape[0]:
        raise ValueError(f"y_true has {y_true.shape[0]} items, proba {proba.shape[0]} rows")
    is_critical = y_true == critical_index
    n_critical = int(is_critical.sum())
    result = {"target_recall": float(target_recall), "n_critical": n_critical}
    if n_critical == 0:
        reason = "no critical sample in the calibration data: fallback threshold 0.5"
        log.warning(reason)
        return {**result, "threshold": 0.5, "recall": None, "precision": None, "achieved": False, "reason": reason}

    p = proba[:, critical_index]
    candidates = np.unique(p)  # ascending
    p_sorted = np.sort(p)
    p_pos_sorted = np.sort(p[is_critical])
    # Number of samples (all / critical) with probability >= t, for every candidate t at once.
    predicted = p.size - np.searchsorted(p_sorted, candidates, side="left")
    tp = p_pos_sorted.size - np.searchsorted(p_pos_sorted, candidates, side="left")
    recall = tp / n_critical
    precision = tp / predicted  # predicted >= 1 for every candidate (t is a data value)
    ok = recall >= float(target_recall) - 1e-12
    # ok is never empty: the lowest candidate has recall 1.
    best_precision = precision[ok].max()
    chosen = np.flatnonzero(ok & (precision == best_precision))[0]  # lowest t among ties: most recall
    # Every t in (next lower probability, chosen] makes the same validation decisions; take the middle of that gap
    # rather than its edge, so a critical sample slightly less confident than the validation ones is still caught.
    lower = candidates[chosen - 1] if chosen > 0 else 0.0
    out = {
        **result,
        "threshold": float((candidates[chosen] + lower) / 2),
        "edge_threshold": float(candidates[chosen]),
        "recall": float(recall[chosen]),
        "precision": float(precision[chosen]),
        "achieved": True,
        "reason": None,
    }
    log.info(
        "critical threshold %.6g: recall %.3f (target %.3f), precision %.3f on %d critical samples",
        out["threshold"],
        out["recall"],
        target_recall,
        out["precision"],
        n_critical,
    )
    return out


# ----------------------------------------------------------------------------------------------- metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true index ``i`` predicted ``j`` (int64, C x C)."""
    y_true = _as_labels(y_true, n_classes, "y_true")
    y_pred = _as_labels(y_pred, n_classes, "y_pred")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _per_class_from_cm(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (NaN for classes without support) and support from a (..., C, C) confusion matrix."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1).astype(np.float64)
    predicted = cm.sum(axis=-2).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(support > 0, np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0), np.nan)
        # 2PR/(P+R) == 2TP/(support+predicted); 0 when TP = 0.
        f1 = np.where(support > 0, 2 * tp / np.maximum(support + predicted, 1), np.nan)
    return precision, recall, f1, support


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC of ``scores`` for the boolean ``positive``; None without both a positive and a negative."""
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.size:
        return None
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415  (lazy: see _pyplot)

    return float(roc_auc_score(positive.astype(np.int64), scores))


def compute_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str],
    critical_index: int,
    threshold: float | None = None,
) -> dict:
    """All evaluation figures of the ``metrics`` contract for true output indices ``y_true`` and ``proba`` (N x C).

    Decisions use :func:`decide` with ``threshold``. Keys: ``macro_f1``, ``macro_precision``, ``macro_recall``,
    ``micro_f1``, ``accuracy``, ``roc_auc_macro``, ``roc_auc_micro``, ``per_class`` ({name: {precision, recall,
    f1, support, roc_auc}}), ``critical_class``, ``critical_recall``, ``critical_precision``, ``threshold``, ``n``,
    ``class_names``, ``confusion_matrix`` (list of lists, rows = true, columns = predicted). See the module
    docstring for null and averaging rules.
    """
    class_names = [str(name) for name in class_names]
    proba = _as_proba(proba)
    n_classes = len(class_names)
    if proba.shape[1] != n_classes:
        raise ValueError(f"proba has {proba.shape[1]} columns but there are {n_classes} class names")
    critical_index = _check_critical(critical_index, n_classes)
    y_true = _as_labels(y_true, n_classes, "y_true")
    if y_true.shape[0] != proba.shape[0]:
        raise ValueError(f"y_true has {y_true.shape[0]} items, proba {proba.shape[0]} rows")
    n = int(y_true.shape[0])
    y_pred = decide(proba, critical_index, threshold)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    precision, recall, f1, support = _per_class_from_cm(cm)
    has_support = support > 0

    per_class = {}
    aucs: list[float] = []
    for k, name in enumerate(class_names):
        auc = _binary_auc(y_true == k, proba[:, k]) if n else None
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {
            "precision": _float_or_none(precision[k]),
            "recall": _float_or_none(recall[k]),
            "f1": _float_or_none(f1[k]),
            "support": int(support[k]),
            "roc_auc": auc,
        }
    onehot = np.zeros_like(proba, dtype=bool)
    onehot[np.arange(n), y_true] = True
    roc_auc_micro = _binary_auc(onehot.ravel(), proba.ravel()) if n else None

    def macro(values: np.ndarray) -> float | None:
        return float(values[has_support].mean()) if has_support.any() else None

    accuracy = float(np.trace(cm) / n) if n else None
    return {
        "n": n,
        "class_names": class_names,
        "threshold": None if threshold is None else float(threshold),
        "accuracy": accuracy,
        "macro_f1": macro(f1),
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "micro_f1": accuracy,  # single-label: pooled precision == pooled recall == accuracy
        "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
        "roc_auc_micro": roc_auc_micro,
        "per_class": per_class,
        "critical_class": class_names[critical_index],
        "critical_recall": _float_or_none(recall[critical_index]),
        "critical_precision": _float_or_none(precision[critical_index]),
        "confusion_matrix": cm.astype(int).tolist(),
    }


# ----------------------------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class MacroF1:
    """Macro-F1 over classes with support; ``batch`` scores many resamples at once (NaN when undefined)."""

    n_classes: int

    def batch(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Macro-F1 of each row of (B x N) label arrays."""
        b, c = y_true.shape[0], self.n_classes
        codes = (np.arange(b)[:, None] * (c * c) + y_true * c + y_pred).ravel()
        cm = np.bincount(codes, minlength=b * c * c).reshape(b, c, c)
        _, _, f1, _ = _per_class_from_cm(cm)
        defined = ~np.isnan(f1)
        count = defined.sum(axis=1)
        total = np.where(defined, f1, 0.0).sum(axis=1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
        y_true, y_pred = _as_labels(y_true, self.n_classes), _as_labels(y_pred, self.n_classes)
        return _float_or_none(self.batch(y_true[None, :], y_pred[None, :])[0])


@dataclass(frozen=True)
class ClassRecall:
    """Recall of one class index (None / NaN without support); ``batch`` scores many resamples at once."""

    index: int

    def batch(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        positive = y_true == self.index
        hits = (positive & (y_pred == self.index)).sum(axis=1)
        support = positive.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(support > 0, hits / np.maximum(support, 1), np.nan)

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
        y_true, y_pred = _as_labels(y_true), _as_labels(y_pred)
        return _float_or_none(self.batch(y_true[None, :], y_pred[None, :])[0])


@dataclass(frozen=True)
class GlareDeltaF1:
    """Glare ΔF1 as :func:`steelqc.tasks.evaluation.robustness.glare_summary` computes ``delta_f1``: the largest drop
    of macro-F1 from the clean predictions to any corrupted variant's, never negative; undefined (NaN) when the
    clean F1 or every corrupted F1 is. ``batch`` scores many paired resamples at once."""

    n_classes: int

    def batch(self, y_true: np.ndarray, clean: np.ndarray, corrupted: Sequence[np.ndarray]) -> np.ndarray:
        """ΔF1 of each row of (B x N) arrays: ``y_true``, the clean and each corrupted variant's decided labels, all
        indexed by the same resample rows."""
        f1 = MacroF1(self.n_classes)
        base = f1.batch(y_true, clean)
        if not corrupted:
            return np.full(base.shape, np.nan)
        drops = np.stack([base - f1.batch(y_true, pred) for pred in corrupted])  # V x B (NaN where undefined)
        known = ~np.isnan(drops)
        largest = np.where(known, drops, -np.inf).max(axis=0)
        return np.where(known.any(axis=0), np.maximum(largest, 0.0), np.nan)

    def __call__(self, y_true: np.ndarray, clean: np.ndarray, corrupted: Sequence[np.ndarray]) -> float | None:
        arrays = [_as_labels(a, self.n_classes) for a in (y_true, clean, *corrupted)]
        return _float_or_none(self.batch(arrays[0][None, :], arrays[1][None, :], [a[None, :] for a in arrays[2:]])[0])


def _check_boot(n_boot: int, alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def resample_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap resamples, in (rows x ``n``) chunks of item indices drawn with replacement from
    ``numpy.random.default_rng(seed)``: every interval of this module draws exactly these for a seed."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def _percentile_interval(scores: list[np.ndarray], n_boot: int, alpha: float) -> tuple[float | None, float | None]:
    """Percentile ``(1 - alpha)`` interval of the defined (non-NaN) resample scores; ``(None, None)`` if none is."""
    values = np.concatenate(scores) if scores else np.empty(0)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None, None
    if values.size < n_boot:
        log.debug("bootstrap: %d of %d resamples undefined, dropped", n_boot - values.size, n_boot)
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float | None],
    n_boot: int = 1000,
    seed: int = 42,
    alpha: float = 0.05,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``metric(y_true, y_pred)`` over ``n_boot`` resamples.

    Resamples draw N items with replacement (:func:`resample_indices`), so the result is deterministic for a seed.
    A metric with a ``batch(y_true_2d, y_pred_2d) -> array`` method (e.g. :class:`MacroF1`, :class:`ClassRecall`)
    is scored on all resamples at once; any other callable is called once per resample. Resamples where the metric
    is undefined (None / NaN, e.g. no critical sample drawn) are dropped; ``(None, None)`` when no data or no
    resample is defined.
    """
    _check_boot(n_boot, alpha)
    y_true, y_pred = _as_labels(y_true, name="y_true"), _as_labels(y_pred, name="y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    n = y_true.shape[0]
    if n == 0:
        return None, None
    batch = getattr(metric, "batch", None)
    scores: list[np.ndarray] = []
    for idx in resample_indices(n, n_boot, seed):
        if callable(batch):
            scores.append(np.asarray(batch(y_true[idx], y_pred[idx]), dtype=np.float64))
        else:
            values = [metric(y_true[row], y_pred[row]) for row in idx]
            scores.append(np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64))
    return _percentile_interval(scores, n_boot, alpha)


def paired_delta_f1_ci(
    y_true: np.ndarray,
    clean: np.ndarray,
    corrupted: Sequence[np.ndarray],
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 42,
    alpha: float = 0.05,
) -> tuple[float | None, float | None]:
    """Paired percentile bootstrap ``(1 - alpha)`` interval of the glare ΔF1 (:class:`GlareDeltaF1`).

    Each resample draws the test images once (:func:`resample_indices`, the same draws as :func:`bootstrap_ci`
    for the seed) and scores the clean and every corrupted variant's decided labels on those same images, so the
    interval reflects how the *difference* moves, not the two F1s' separate noise. ``(None, None)`` without data,
    without a corrupted variant, or when no resample is defined.
    """
    _check_boot(n_boot, alpha)
    y_true = _as_labels(y_true, n_classes, "y_true")
    preds = [_as_labels(p, n_classes, "y_pred") for p in (clean, *corrupted)]
    for pred in preds:
        if pred.shape != y_true.shape:
            raise ValueError(f"y_true {y_true.shape} and a variant's predictions {pred.shape} differ in length")
    n = y_true.shape[0]
    if n == 0 or not corrupted:
        return None, None
    delta = GlareDeltaF1(n_classes)
    scores = [
        delta.batch(y_true[idx], preds[0][idx], [pred[idx] for pred in preds[1:]])
        for idx in resample_indices(n, n_boot, seed)
    ]
    return _percentile_interval(scores, n_boot, alpha)


def confidence_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    critical_index: int,
    n_boot: int = 1000,
    seed: int = 42,
    alpha: float = 0.05,
    variant_preds: Mapping[str, np.ndarray | None] | None = None,
) -> dict[str, list[float | None]]:
    """Bootstrap intervals ``{"macro_f1": [lo, hi], "critical_recall": [lo, hi], "glare_delta_f1": [lo, hi]}`` for
    decided labels ``y_pred``.

    ``glare_delta_f1`` is the paired interval of :func:`paired_delta_f1_ci` over ``variant_preds`` (decided labels
    by glare variant: ``clean`` and the corrupted ones, ``dim``, ``bright``). The key is absent when
    ``variant_preds`` is not given; ``[None, None]`` when it is but ΔF1 cannot be computed (no ``clean``, no
    corrupted variant: a variant given as None counts as missing), like the other keys when undefined.
    """
    n_classes = len(class_names)
    critical_index = _check_critical(critical_index, n_classes)
    y_true = _as_labels(y_true, n_classes, "y_true")
    y_pred = _as_labels(y_pred, n_classes, "y_pred")
    out = {
        "macro_f1": list(bootstrap_ci(y_true, y_pred, MacroF1(n_classes), n_boot, seed, alpha)),
        "critical_recall": list(bootstrap_ci(y_true, y_pred, ClassRecall(critical_index), n_boot, seed, alpha)),
    }
    if variant_preds is not None:
        clean = variant_preds.get("clean")
        corrupted = [pred for name, pred in variant_preds.items() if name != "clean" and pred is not None]
        glare = (
            paired_delta_f1_ci(y_true, clean, corrupted, n_classes, n_boot, seed, alpha)
            if clean is not None
            else (None, None)
        )
        out["glare_delta_f1"] = list(glare)
    return out


# ----------------------------------------------------------------------------------------------- per source


def per_source(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sources: Sequence[str],
    class_names: Sequence[str],
    critical_index: int,
    held_classes: Mapping[str, Sequence[str]] | None = None,
    n_boot: int = 1000,
    seed: int = 42,
    alpha: float = 0.05,
) -> dict[str, dict]:
    """Figures of each data source on its own images (fairness across plants and steel types).

    ``sources`` names the source of each item; decided labels ``y_pred`` as for :func:`confidence_intervals`.
    Returns ``{source: {n, macro_f1, critical_recall, support, confidence_intervals}}``: ``support`` counts the
    source's test images by class name, for every class it holds (``held_classes``: a source's classes in all its
    data, 0 when none reached its test images) and every class it has test images of; the macro-F1 runs over the
    classes with support, ``critical_recall`` is None without critical images, and the intervals are the bootstrap
    intervals of :func:`confidence_intervals` over the source's images alone.
    """
    n_classes = len(class_names)
    critical_index = _check_critical(critical_index, n_classes)
    y_true, y_pred = _as_labels(y_true, n_classes, "y_true"), _as_labels(y_pred, n_classes, "y_pred")
    sources = np.asarray([str(s) for s in sources], dtype=object)
    if sources.shape[0] != y_true.shape[0]:
        raise ValueError(f"{sources.shape[0]} source names for {y_true.shape[0]} items")
    out: dict[str, dict] = {}
    for name in sorted(set(sources.tolist()) | set(held_classes or {})):
        mine = sources == name
        truth, pred = y_true[mine], y_pred[mine]
        counts = np.bincount(truth, minlength=n_classes)
        held = set((held_classes or {}).get(name, ()))
        support = {c: int(counts[k]) for k, c in enumerate(class_names) if counts[k] > 0 or c in held}
        out[name] = {
            "n": int(mine.sum()),
            "macro_f1": MacroF1(n_classes)(truth, pred) if truth.size else None,
            "critical_recall": ClassRecall(critical_index)(truth, pred) if truth.size else None,
            "support": support,
            "confidence_intervals": confidence_intervals(truth, pred, class_names, critical_index, n_boot, seed, alpha),
        }
    return out


# ----------------------------------------------------------------------------------------------- mistakes


def most_confident_mistakes(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, n: int = 20) -> list[int]:
    """Indices of up to ``n`` misclassified samples, most confident first (confidence = probability of the
    predicted class); ties keep the lower index first."""
    proba = _as_proba(proba)
    y_true = _as_labels(y_true, proba.shape[1], "y_true")
    y_pred = _as_labels(y_pred, proba.shape[1], "y_pred")
    wrong = np.flatnonzero(y_true != y_pred)
    confidence = proba[wrong, y_pred[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return [int(i) for i in wrong[order[: max(int(n), 0)]]]


# ----------------------------------------------------------------------------------------------- plots


def _pyplot():
    # sklearn and matplotlib are imported where used: model_registry.packaging imports this module (decide), and
    # loading a model (`steelqc predict`, the MLflow loader) should not pay ~2 s for them.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_confusion_matrix(cm: np.ndarray | list, class_names: Sequence[str], path: Path | str) -> Path:
    """Confusion matrix as a PNG: counts in each cell, colour = share of the true class (row-normalised)."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = 1.2 + 0.9 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix")
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str], path: Path | str) -> Path:
    """One-vs-rest ROC curves (classes with a positive and a negative) plus the micro-average, as a PNG."""
    from sklearn.metrics import roc_curve  # noqa: PLC0415  (lazy: see _pyplot)

    plt = _pyplot()
    proba = _as_proba(proba)
    y_true = _as_labels(y_true, proba.shape[1], "y_true")
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for k, name in enumerate(class_names):
        positive = y_true == k
        auc = _binary_auc(positive, proba[:, k])
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(positive.astype(int), proba[:, k])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {auc:.3f})")
    onehot = np.zeros_like(proba, dtype=bool)
    onehot[np.arange(y_true.size), y_true] = True
    auc = _binary_auc(onehot.ravel(), proba.ravel())
    if auc is not None:
        fpr, tpr, _ = roc_curve(onehot.ravel().astype(int), proba.ravel())
        ax.plot(fpr, tpr, "k--", lw=1.5, label=f"micro-average (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (one-vs-rest)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "ROC not computable (needs positives and negatives)", ha="center", va="center")
    return _save(fig, path)


def _grid(n: int, wide: bool) -> tuple[int, int]:
    cols = min(n, 2 if wide else 5) or 1
    return math.ceil(n / cols) or 1, cols


def plot_mistakes(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    pred_names: Sequence[str],
    confidences: Sequence[float],
    path: Path | str,
    n: int = 20,
) -> Path:
    """Grid of the first ``n`` images (pass them most-confident first) captioned ``true -> predicted (conf)``."""
    plt = _pyplot()
    count = min(n, len(images))
    if count == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        return _save(fig, path)
    first = np.asarray(images[0])
    wide = first.shape[1] > 2 * first.shape[0]
    rows, cols = _grid(count, wide)
    cell_w, cell_h = (6.0, 6.0 * first.shape[0] / first.shape[1] + 0.45) if wide else (2.6, 2.9)
    fig, axes = plt.subplots(rows, cols, figsize=(cell_w * cols, cell_h * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(count):
        ax = axes.ravel()[i]
        image = np.asarray(images[i])
        limits = {"vmin": 0, "vmax": 255} if image.dtype == np.uint8 else {}
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, **limits)
        ax.set_title(f"true {true_names[i]} → pred {pred_names[i]} ({float(confidences[i]):.2f})", fontsize=8)
    fig.suptitle(f"{count} most confident mistakes", fontsize=10)
    return _save(fig, path)
