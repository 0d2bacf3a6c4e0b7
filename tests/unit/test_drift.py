"""The drift decision over Evidently 0.7: no alarm on a fresh sample of the same images, alarms on shifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steelqc.monitoring.drift import DRIFT_FEATURES, REPORTED_FEATURES, check_drift, class_mix
from steelqc.tasks.config import DriftRule
from steelqc.tasks.features import PHOTOMETRIC, embedding_columns


def frame(
    n: int, seed: int, brightness: float = 0.0, emb_shift: float = 0.0, predicted=("ok", "crack")
) -> pd.DataFrame:
    """Feature rows as features_frame makes them: photometric, 4 embedding components, the model's view."""
    rng = np.random.default_rng(seed)
    data = {name: rng.normal(0.5, 0.1, n) for name in PHOTOMETRIC}
    data["brightness_mean"] = data["brightness_mean"] + brightness
    data.update({c: rng.normal(emb_shift, 1.0, n) for c in embedding_columns(4)})
    data["confidence"] = rng.uniform(0.6, 1.0, n)
    data["margin"] = data["confidence"] - rng.uniform(0.0, 0.3, n)
    data["predicted"] = rng.choice(list(predicted), n)
    return pd.DataFrame(data)


REFERENCE = frame(1000, seed=0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_fresh_sample_of_the_same_distribution_is_not_drift(seed: int) -> None:
    result = check_drift(REFERENCE, frame(200, seed), DriftRule())
    assert not result.drift_detected, result.reasons
    assert result.drifted_share == 0 and result.reason == "no drift"
    assert set(result.feature_scores) == {*DRIFT_FEATURES, *REPORTED_FEATURES}


def test_a_brightness_shift_is_drift_and_the_reason_names_the_feature(tmp_path: Path) -> None:
    html = tmp_path / "report" / "drift.html"
    result = check_drift(REFERENCE, frame(200, 4, brightness=0.1), DriftRule(), html=html)
    assert result.drift_detected and result.drifted_features == ["brightness_mean"]
    assert "brightness_mean" in result.reason and "wasserstein" in result.reason
    assert html.is_file() and html.stat().st_size > 10_000 and result.report == str(html)
    assert result.to_dict()["reason"] == result.reason


def test_an_embedding_shift_alone_is_drift() -> None:
    result = check_drift(REFERENCE, frame(200, 5, emb_shift=0.8), DriftRule())
    assert result.drift_detected and result.embedding_drifted and result.drifted_share == 0
    assert "embedding drift" in result.reason and result.embedding_drift > DriftRule().embedding_threshold


def test_thresholds_come_from_the_rule() -> None:
    shifted = frame(200, 6, brightness=0.1)
    assert not check_drift(REFERENCE, shifted, DriftRule(stattest_threshold=5.0)).drift_detected
    strict = DriftRule(stattest="ks", stattest_threshold=0.05, drifted_share=0.1)
    assert check_drift(REFERENCE, shifted, strict).drifted_features == ["brightness_mean"]  # p-value below 0.05


def test_confidence_drop_and_class_mix_are_reported_not_voted() -> None:
    current = frame(200, 7, predicted=("crack",))
    current["confidence"] -= 0.2
    result = check_drift(REFERENCE, current, DriftRule())
    assert result.confidence_drop == pytest.approx(0.2, abs=0.03)
    assert result.feature_scores["confidence"] > 0.3 and not result.drift_detected, "scored, not voted"
    assert result.class_mix["crack"]["current"] == 1.0 and result.class_mix_shift == pytest.approx(0.5, abs=0.05)
    mix, shift = class_mix(REFERENCE, REFERENCE)
    assert shift == 0 and set(mix) == {"ok", "crack"}


def test_an_empty_side_is_an_error_not_a_verdict() -> None:
    with pytest.raises(ValueError, match="both sides"):
        check_drift(REFERENCE, REFERENCE.iloc[:0], DriftRule())


def test_the_confidence_drop_is_measured_against_images_the_model_did_not_train_on() -> None:
    reference = pd.concat([REFERENCE.assign(split="train"), frame(100, 8).assign(split="val")], ignore_index=True)
    reference.loc[reference["split"] == "train", "confidence"] = 1.0  # a model fits its training images
    current = frame(200, 9)
    result = check_drift(reference, current, DriftRule())
    val_mean = reference.loc[reference["split"] == "val", "confidence"].mean()
    assert result.confidence_drop == pytest.approx(val_mean - current["confidence"].mean(), abs=1e-4)
