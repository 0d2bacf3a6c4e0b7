"""Evaluation metrics, decision rule, threshold calibration, bootstrap intervals and plots, on hand-computed cases."""

from __future__ import annotations

import json
import time
from fractions import Fraction

import numpy as np
import pytest

from steelqc.tasks.evaluation.metrics import (
    ClassRecall,
    MacroF1,
    bootstrap_ci,
    calibrate_threshold,
    compute_metrics,
    confidence_intervals,
    decide,
    most_confident_mistakes,
    plot_confusion_matrix,
    plot_mistakes,
    plot_roc,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES4 = ["ok", "crack", "scratch", "pits"]
CRACK = 1


def _proba_for(pred: list[int], n_classes: int, top: float = 0.7) -> np.ndarray:
    """Rows whose argmax is ``pred`` (top probability ``top``, the rest shared equally)."""
    proba = np.full((len(pred), n_classes), (1 - top) / (n_classes - 1))
    proba[np.arange(len(pred)), pred] = top
    return proba


# Hand case: 10 samples, 4 classes; "pits" has no true sample but is predicted once (sample 7).
Y_TRUE = [0, 0, 0, 1, 1, 1, 2, 2, 1, 2]
Y_PRED = [0, 0, 1, 1, 1, 0, 2, 3, 1, 2]
# Confusion matrix (rows true, columns predicted):
#   ok:      2 1 0 0   support 3
#   crack:   1 3 0 0   support 4
#   scratch: 0 0 2 1   support 3
#   pits:    0 0 0 0   support 0
# predicted counts: ok 3, crack 4, scratch 2, pits 1
# ok P=2/3 R=2/3 F1=2/3; crack P=3/4 R=3/4 F1=3/4; scratch P=2/2 R=2/3 F1=4/5; pits: null, out of macro.


def test_compute_metrics_hand_case():
    m = compute_metrics(np.array(Y_TRUE), _proba_for(Y_PRED, 4), NAMES4, CRACK)
    assert m["n"] == 10
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [1, 3, 0, 0], [0, 0, 2, 1], [0, 0, 0, 0]]
    expected = {
        "ok": (Fraction(2, 3), Fraction(2, 3), Fraction(2, 3), 3),
        "crack": (Fraction(3, 4), Fraction(3, 4), Fraction(3, 4), 4),
        "scratch": (Fraction(1), Fraction(2, 3), Fraction(4, 5), 3),
    }
    for name, (p, r, f1, support) in expected.items():
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(float(p))
        assert got["recall"] == pytest.approx(float(r))
        assert got["f1"] == pytest.approx(float(f1))
        assert got["support"] == support
    pits = m["per_class"]["pits"]
    assert pits["precision"] is None and pits["recall"] is None and pits["f1"] is None and pits["support"] == 0
    assert pits["roc_auc"] is None  # no positive
    # Macro over the three classes with support only (pits excluded although predicted once).
    assert m["macro_f1"] == pytest.approx(float((Fraction(2, 3) + Fraction(3, 4) + Fraction(4, 5)) / 3))  # 133/180
    assert m["macro_precision"] == pytest.approx(29 / 36)
    assert m["macro_recall"] == pytest.approx(25 / 36)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["micro_f1"] == pytest.approx(0.7)
    assert m["critical_class"] == "crack"
    assert m["critical_recall"] == pytest.approx(0.75)
    assert m["critical_precision"] == pytest.approx(0.75)
    assert m["threshold"] is None
    # The macro ROC-AUC averages exactly the classes that have a positive and a negative.
    aucs = [m["per_class"][k]["roc_auc"] for k in ("ok", "crack", "scratch")]
    assert m["roc_auc_macro"] == pytest.approx(np.mean(aucs))
    json.dumps(m)  # plain Python values only
    assert all(type(v) is float for v in (m["macro_f1"], m["accuracy"], m["roc_auc_micro"]))


def test_roc_auc_perfect_and_one_swapped_pair():
    y = np.array([0, 0, 1, 1])
    crack = np.array([0.1, 0.2, 0.8, 0.9])
    m = compute_metrics(y, np.c_[1 - crack, crack], ["ok", "crack"], 1)
    assert m["roc_auc_macro"] == 1.0 and m["roc_auc_micro"] == 1.0
    # Positive 0.35 ranks below negative 0.4: 3 of the 4 positive/negative pairs are ordered -> 0.75.
    crack = np.array([0.1, 0.4, 0.35, 0.8])
    m = compute_metrics(y, np.c_[1 - crack, crack], ["ok", "crack"], 1)
    assert m["per_class"]["crack"]["roc_auc"] == pytest.approx(0.75)
    assert m["per_class"]["ok"]["roc_auc"] == pytest.approx(0.75)
    assert m["roc_auc_macro"] == pytest.approx(0.75)
    # Micro: positives (0.9, 0.6, 0.35, 0.8) vs negatives (0.1, 0.4, 0.65, 0.2): 4 + 3 + 2 + 4 = 13 of 16 pairs.
    assert m["roc_auc_micro"] == pytest.approx(13 / 16)


def test_roc_auc_null_when_not_computable():
    m = compute_metrics(np.array([1, 1, 1]), _proba_for([1, 0, 1], 2), ["ok", "crack"], 1)
    assert m["roc_auc_macro"] is None  # no class has both a positive and a negative
    assert m["per_class"]["ok"]["f1"] is None
    assert m["macro_f1"] == pytest.approx(0.8)  # crack only: P=1, R=2/3
    assert m["critical_recall"] == pytest.approx(2 / 3)


def test_supported_class_never_predicted_has_zero_precision():
    m = compute_metrics(np.array([0, 1, 1]), _proba_for([0, 0, 0], 2), ["ok", "crack"], 1)
    assert m["per_class"]["crack"] == {**m["per_class"]["crack"], "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert m["critical_precision"] == 0.0


def test_compute_metrics_uses_the_threshold():
    proba = np.array([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1]])
    y = np.array([1, 1, 0])
    plain = compute_metrics(y, proba, ["ok", "crack"], 1)
    assert plain["critical_recall"] == 0.0
    safe = compute_metrics(y, proba, ["ok", "crack"], 1, threshold=0.3)
    assert safe["critical_recall"] == 1.0 and safe["accuracy"] == 1.0 and safe["threshold"] == 0.3


def test_decide():
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.45, 0.35], [0.6, 0.25, 0.15]])
    assert decide(proba, 1, None).tolist() == [0, 2, 1, 0]
    assert decide(proba, 1, 0.25).tolist() == [1, 2, 1, 1]  # >= threshold is critical, even when not argmax
    assert decide(proba, 1, 0.5).tolist() == [0, 2, 2, 0]  # argmax critical below threshold -> best other class


def test_calibrate_threshold_best_precision_at_target():
    # (critical probability, is critical), 4 critical samples:
    #   t=0.7 -> TP 3 of 4 predicted (R .75, P .75); t=0.4 -> TP 4 of 7 (R 1, P 4/7); t=0.1 -> 4 of 9.
    p = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2, 0.1])
    crit = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0])
    proba = np.c_[(1 - p) * 0.6, p, (1 - p) * 0.4]
    y = np.where(crit == 1, 1, 0)
    r = calibrate_threshold(y, proba, 1, target_recall=0.75)
    # edge 0.7, next lower probability 0.6: the threshold sits mid-gap at 0.65 (same validation decisions)
    assert r["edge_threshold"] == 0.7 and r["threshold"] == pytest.approx(0.65)
    assert r["recall"] == 0.75 and r["precision"] == 0.75
    assert r["achieved"] is True and r["n_critical"] == 4 and r["reason"] is None
    r = calibrate_threshold(y, proba, 1, target_recall=0.95)
    assert r["edge_threshold"] == 0.4 and r["threshold"] == pytest.approx(0.3)
    assert r["recall"] == 1.0 and r["precision"] == pytest.approx(4 / 7)
    # The reported recall is the recall under decide() with that threshold.
    assert compute_metrics(y, proba, ["ok", "crack", "x"], 1, r["threshold"])["critical_recall"] == r["recall"]


def test_calibrate_threshold_ties_take_the_threshold_that_catches_most():
    p = np.array([0.9, 0.8, 0.3])
    proba = np.c_[1 - p, p]
    # t=0.9: R .5, P 1; t=0.8: R 1, P 1 -> both reach 0.5 with precision 1: the lower one catches both criticals.
    out = calibrate_threshold(np.array([1, 1, 0]), proba, 1, target_recall=0.5)
    assert out["edge_threshold"] == 0.8
    assert out["recall"] == 1.0 and out["precision"] == 1.0
    assert calibrate_threshold(np.array([1, 1, 0]), proba, 1, target_recall=1.0)["edge_threshold"] == 0.8
    # mid-gap: (0.8 + 0.3) / 2; the lowest candidate's gap reaches down to 0
    assert calibrate_threshold(np.array([1, 1, 0]), proba, 1, target_recall=1.0)["threshold"] == pytest.approx(0.55)
    assert calibrate_threshold(np.array([1, 1, 1]), proba, 1, target_recall=1.0)["threshold"] == pytest.approx(0.15)


def test_calibrate_threshold_without_critical_samples():
    r = calibrate_threshold(np.array([0, 0]), np.array([[0.9, 0.1], [0.8, 0.2]]), 1)
    assert r["threshold"] == 0.5 and r["achieved"] is False and r["n_critical"] == 0
    assert r["recall"] is None and r["precision"] is None and "no critical" in r["reason"]
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([1]), np.array([[0.1, 0.9]]), 1, target_recall=1.5)


def _noisy_labels(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, n)
    y_pred = np.where(rng.random(n) < 0.8, y_true, rng.integers(0, 4, n))
    return y_true, y_pred


def test_bootstrap_ci_contains_estimate_is_deterministic_and_narrows():
    y_true, y_pred = _noisy_labels(200)
    metric = MacroF1(4)
    point = metric(y_true, y_pred)
    lo, hi = bootstrap_ci(y_true, y_pred, metric)
    assert lo < point < hi
    assert bootstrap_ci(y_true, y_pred, metric, seed=42) == (lo, hi)
    assert bootstrap_ci(y_true, y_pred, metric, seed=7) != (lo, hi)
    # Ten copies of the same data: same estimate, interval about sqrt(10) times narrower.
    lo10, hi10 = bootstrap_ci(np.tile(y_true, 10), np.tile(y_pred, 10), metric)
    assert lo10 < point < hi10
    assert (hi10 - lo10) < 0.5 * (hi - lo)


def test_bootstrap_batched_path_matches_plain_callable_and_is_fast():
    y_true, y_pred = _noisy_labels(300, seed=3)
    metric = MacroF1(4)
    start = time.perf_counter()
    fast = bootstrap_ci(y_true, y_pred, metric, n_boot=1000)
    assert time.perf_counter() - start < 2.0
    slow = bootstrap_ci(y_true, y_pred, lambda t, p: metric(t, p), n_boot=200)
    assert slow == bootstrap_ci(y_true, y_pred, metric, n_boot=200)
    assert fast[0] < fast[1]


def test_confidence_intervals_and_undefined_metric():
    y_true, y_pred = _noisy_labels(150, seed=1)
    ci = confidence_intervals(y_true, y_pred, NAMES4, CRACK)
    assert set(ci) == {"macro_f1", "critical_recall"}
    recall = ClassRecall(CRACK)(y_true, y_pred)
    assert ci["critical_recall"][0] <= recall <= ci["critical_recall"][1]
    no_crack = np.array([0, 2, 3, 0])
    assert confidence_intervals(no_crack, no_crack, NAMES4, CRACK)["critical_recall"] == [None, None]


def test_most_confident_mistakes():
    y_true = np.array([0, 1, 1, 0, 2])
    proba = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.3, 0.6, 0.1], [0.05, 0.05, 0.9]])
    y_pred = np.array([0, 0, 1, 1, 0])  # mistakes: 1 (conf .8), 3 (conf .6), 4 (conf .05)
    assert most_confident_mistakes(y_true, y_pred, proba) == [1, 3, 4]
    assert most_confident_mistakes(y_true, y_pred, proba, n=2) == [1, 3]


def test_plots_write_png(tmp_path):
    y_true = np.array([0, 1, 2, 1, 0, 2])
    proba = _proba_for([0, 1, 1, 1, 2, 2], 3)
    names = ["ok", "crack", "scratch"]
    m = compute_metrics(y_true, proba, names, 1)
    images = [np.random.default_rng(i).integers(0, 255, (32, 200), dtype=np.uint8) for i in range(3)]
    paths = [
        plot_confusion_matrix(m["confusion_matrix"], names, tmp_path / "confusion_matrix.png"),
        plot_roc(y_true, proba, names, tmp_path / "roc.png"),
        plot_mistakes(
            images, ["crack", "ok", "scratch"], ["ok", "scratch", "crack"], [0.9, 0.8, 0.7], tmp_path / "m.png"
        ),
        plot_mistakes([], [], [], [], tmp_path / "none.png"),
    ]
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG_MAGIC
