"""The paired bootstrap interval of the glare ΔF1 (tasks/evaluation/metrics.py) and how assess() fills it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from steelqc.tasks.evaluation import assess as assess_module
from steelqc.tasks.evaluation.metrics import (
    GlareDeltaF1,
    MacroF1,
    bootstrap_ci,
    compute_metrics,
    confidence_intervals,
    decide,
    paired_delta_f1_ci,
    resample_indices,
)
from steelqc.tasks.evaluation.robustness import glare_summary
from tests.helpers import LABELS, make_split

NAMES = ["ok", "crack", "scratch", "pits"]
CRACK = 1


def _noisy(n: int, seed: int, accuracy: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, n)
    return y_true, np.where(rng.random(n) < accuracy, y_true, rng.integers(0, 4, n))


def _lose(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``y_pred`` with its first ``k`` correct predictions made wrong (the next class)."""
    worse = y_pred.copy()
    correct = np.flatnonzero(y_true == y_pred)[:k]
    worse[correct] = (y_true[correct] + 1) % 4
    return worse


def _unpaired(y_true: np.ndarray, clean: np.ndarray, dim: np.ndarray, n_boot: int = 1000) -> tuple[float, float]:
    """What an unpaired bootstrap would give: clean and dim resampled independently."""
    f1, n = MacroF1(4), y_true.size
    a, b = (np.random.default_rng(s).integers(0, n, size=(n_boot, n)) for s in (1, 2))
    delta = np.maximum(f1.batch(y_true[a], clean[a]) - f1.batch(y_true[b], dim[b]), 0.0)
    lo, hi = np.quantile(delta, [0.025, 0.975])
    return float(lo), float(hi)


def test_identical_variants_give_exactly_zero_though_unpaired_would_not() -> None:
    y_true, clean = _noisy(150, seed=1)
    ci = confidence_intervals(
        y_true, clean, NAMES, CRACK, variant_preds={"clean": clean, "dim": clean, "bright": clean}
    )
    assert ci["glare_delta_f1"] == [0.0, 0.0]
    assert _unpaired(y_true, clean, clean)[1] > 0.05, "the data is noisy enough that pairing matters"


def test_known_loss_interval_holds_the_estimate_and_is_not_degenerate() -> None:
    y_true, clean = _noisy(300, seed=2)
    dim = _lose(y_true, clean, 30)  # 30 of ~240 correct predictions lost under dim; bright unchanged
    point = glare_summary(MacroF1(4)(y_true, clean), MacroF1(4)(y_true, dim), MacroF1(4)(y_true, clean))["delta_f1"]
    assert point > 0.05
    lo, hi = paired_delta_f1_ci(y_true, clean, [dim, clean], 4)
    assert 0.0 < lo < point < hi and hi - lo > 0.01


def test_paired_interval_is_much_narrower_than_an_unpaired_one() -> None:
    y_true, clean = _noisy(300, seed=3)
    dim = _lose(y_true, clean, 12)  # strongly correlated with clean: the same images are hard in both
    lo, hi = paired_delta_f1_ci(y_true, clean, [dim], 4)
    ulo, uhi = _unpaired(y_true, clean, dim)
    assert hi - lo < 0.5 * (uhi - ulo)


def test_same_resamples_as_the_macro_f1_interval() -> None:
    """Corrupted variants all wrong (F1 0 on every resample): ΔF1 = clean F1 per resample, so the glare interval is
    the macro-F1 interval exactly, which only holds when both draw the very same images for the seed."""
    y_true, clean = _noisy(200, seed=4)
    wrong = (y_true + 1) % 4
    ci = confidence_intervals(y_true, clean, NAMES, CRACK, seed=7, variant_preds={"clean": clean, "dim": wrong})
    assert ci["glare_delta_f1"] == ci["macro_f1"]
    assert ci["glare_delta_f1"] == list(bootstrap_ci(y_true, clean, MacroF1(4), seed=7))


def test_batch_rows_are_paired_resamples() -> None:
    y_true, clean = _noisy(50, seed=5)
    dim = _lose(y_true, clean, 5)
    idx = next(resample_indices(50, 3, seed=42))
    got = GlareDeltaF1(4).batch(y_true[idx], clean[idx], [dim[idx]])
    f1 = MacroF1(4)
    want = [max(f1(y_true[row], clean[row]) - f1(y_true[row], dim[row]), 0.0) for row in idx]
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_statistic_is_the_point_estimate_of_glare_summary() -> None:
    y_true, clean = _noisy(120, seed=6)
    dim, bright = _lose(y_true, clean, 4), _lose(y_true, clean, 9)
    better = y_true.copy()  # a variant better than clean: ΔF1 never negative
    metric = GlareDeltaF1(4)
    f1 = {name: MacroF1(4)(y_true, p) for name, p in (("clean", clean), ("dim", dim), ("bright", bright))}
    assert metric(y_true, clean, [dim, bright]) == pytest.approx(glare_summary(*f1.values())["delta_f1"], abs=1e-12)
    assert metric(y_true, clean, [better]) == 0.0


def test_missing_variants() -> None:
    y_true, clean = _noisy(100, seed=7)
    bright = _lose(y_true, clean, 6)
    assert "glare_delta_f1" not in confidence_intervals(y_true, clean, NAMES, CRACK), "no variants: key absent"
    only_bright = confidence_intervals(
        y_true, clean, NAMES, CRACK, variant_preds={"clean": clean, "dim": None, "bright": bright}
    )
    assert only_bright["glare_delta_f1"] == list(paired_delta_f1_ci(y_true, clean, [bright], 4))
    no_corrupted = confidence_intervals(y_true, clean, NAMES, CRACK, variant_preds={"clean": clean})
    no_clean = confidence_intervals(y_true, clean, NAMES, CRACK, variant_preds={"dim": bright, "bright": bright})
    assert no_corrupted["glare_delta_f1"] == no_clean["glare_delta_f1"] == [None, None]
    assert paired_delta_f1_ci(np.array([], dtype=int), np.array([], dtype=int), [np.array([], dtype=int)], 4) == (
        None,
        None,
    )
    with pytest.raises(ValueError):
        paired_delta_f1_ci(y_true, clean, [bright[:-1]], 4)


def test_thousand_resamples_stay_fast() -> None:
    y_true, clean = _noisy(1000, seed=8)
    start = time.perf_counter()
    lo, hi = paired_delta_f1_ci(y_true, clean, [_lose(y_true, clean, 40), _lose(y_true, clean, 20)], 4, n_boot=1000)
    assert time.perf_counter() - start < 3.0 and lo < hi


def test_assess_fills_the_paired_interval_from_the_decided_variants(tmp_path: Path, monkeypatch) -> None:
    """assess() passes each variant's predictions decided with the calibrated threshold (not argmax)."""
    frame = make_split(tmp_path / "test", 60, seed=9)
    y_true = frame["label"].to_numpy()  # LABELS: output index == class id here (0 ok, 1 crack, 2 scratch)
    rng = np.random.default_rng(0)
    clean = np.full((60, 3), 0.1)
    clean[np.arange(60), y_true] = 0.8
    clean[rng.choice(60, 8, replace=False)] = [0.6, 0.3, 0.1]  # argmax ok; crack under a 0.25 threshold
    dim = clean.copy()
    dim[y_true == 2] = [0.8, 0.1, 0.1]  # scratch now read as ok
    probas = {None: clean, "dim": dim, "bright": clean}

    def fake_predict(model, frame, label_space, spec, batch_size=32, device="cpu", corruption=None):
        return probas[getattr(corruption, "variant", None)]

    monkeypatch.setattr(assess_module, "predict_proba", fake_predict)
    threshold = 0.25
    result = assess_module.assess(None, None, frame, LABELS, None, tmp_path / "eval", threshold, bootstrap_samples=500)
    metrics = result["metrics"]
    decided = [decide(p, 1, threshold) for p in (clean, dim, clean)]
    want = paired_delta_f1_ci(y_true, decided[0], decided[1:], 3, n_boot=500, seed=0)
    assert metrics["confidence_intervals"]["glare_delta_f1"] == list(want)
    argmax = [decide(p, 1, None) for p in (clean, dim)]
    assert list(paired_delta_f1_ci(y_true, argmax[0], argmax[1:], 3, n_boot=500, seed=0)) != list(want)
    lo, hi = want
    assert lo <= metrics["glare"]["delta_f1"] <= hi and lo < hi
    f1_dim = compute_metrics(y_true, dim, LABELS.names, 1, threshold)["macro_f1"]
    assert metrics["glare"]["f1_dim"] == f1_dim
