"""The promotion policy, the champion's re-scoring and the version tags, without MLflow: what happens to a version
(auto, manual, gates failed), the one "champion moved while we waited" rule, the champion's figures on this run's
test split, and the tags a version is registered with."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from steelqc.model_registry.champion import rescore
from steelqc.model_registry.gates import GateReport, Verdict, evaluate_gates
from steelqc.model_registry.policy import PromotionDecision, decide_promotion, unchanged
from steelqc.model_registry.promotion import logged_model_id
from steelqc.model_registry.tags import version_tags
from steelqc.tasks.config import Gates
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.assess import Evaluation

PASSED = Verdict(passed=True, refused=False, reason="all gates passed")
FAILED = Verdict(passed=False, refused=False, reason="failed: macro_f1")
REFUSED = Verdict(passed=False, refused=True, reason="refused to gate: 2 test images of the critical class 'crack'")
LABELS = LabelSpace({0: "ok", 1: "crack", 2: "dent"}, "crack")


# -------------------------------------------------------------------------------------------------- policy


@pytest.mark.parametrize("approval", ["auto", "manual"])
@pytest.mark.parametrize("verdict", [FAILED, REFUSED])
def test_failed_or_refused_gates_move_nothing(verdict: Verdict, approval: str) -> None:
    decision = decide_promotion(verdict, approval, champion_before="3")
    assert decision == PromotionDecision(False, False, False, verdict.reason, verdict.reason)


def test_auto_makes_a_passing_version_challenger_and_champion() -> None:
    first = decide_promotion(PASSED, "auto", champion_before=None)
    assert (first.challenger, first.champion, first.pending) == (True, True, False)
    assert first.reason == "all gates passed" and first.audit_reason == "auto: all gates passed, first champion"
    later = decide_promotion(PASSED, "auto", champion_before="3")
    assert later.audit_reason == "auto: all gates passed, not worse than champion v3"


def test_manual_makes_a_passing_version_challenger_and_waits() -> None:
    decision = decide_promotion(PASSED, "manual", champion_before="3")
    assert (decision.challenger, decision.champion, decision.pending) == (True, False, True)
    assert decision.reason == "approval policy manual: awaiting approval"


def test_an_unknown_approval_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="approval policy"):
        decide_promotion(PASSED, "sometimes", champion_before=None)


def test_the_champion_moved_rule() -> None:
    check = unchanged("3", during="during this run", then="not promoted (re-run to compare with the new champion)")
    assert check("3") is None
    assert check("4") == (
        "champion changed from 3 to 4 during this run; not promoted (re-run to compare with the new champion)"
    )
    assert check(None).startswith("champion changed from 3 to None")
    first = unchanged(None)
    assert first(None) is None and first("1") == "champion changed from None to 1 meanwhile"
    assert unchanged("2", alias="challenger")("5") == "challenger changed from 2 to 5 meanwhile"


# ------------------------------------------------------------------------------------------ champion re-scored


class StubModel:
    """A loaded model as re-scoring sees it: label space, threshold, probabilities for a frame."""

    def __init__(self, label_space: LabelSpace, proba: np.ndarray, threshold: float | None = None) -> None:
        self.label_space, self.threshold, self.proba = label_space, threshold, proba
        self.frames: list[pd.DataFrame] = []

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        self.frames.append(frame)
        return self.proba


def test_the_champion_is_scored_on_the_same_test_split_with_its_own_threshold() -> None:
    test = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "label": [0, 1, 1, 2]})
    proba = np.array([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    plain = rescore(StubModel(LABELS, proba), "7", test, LABELS)
    assert plain.version == "7" and plain.comparable and plain.critical_recall == 0.5
    assert plain.critical_precision == 1.0 and plain.macro_f1 is not None
    calibrated = rescore(StubModel(LABELS, proba, threshold=0.3), "7", test, LABELS)  # crack at p >= 0.3
    assert calibrated.critical_recall == 1.0
    assert set(calibrated.to_dict()) == {"version", "comparable", "macro_f1", "critical_recall", "critical_precision"}


def test_a_champion_with_another_label_space_is_not_comparable_and_not_scored() -> None:
    other = LabelSpace({0: "ok", 1: "crazing"}, "crazing")
    model = StubModel(other, np.zeros((0, 2)))
    score = rescore(model, "2", pd.DataFrame({"image_id": [], "label": []}), LABELS)
    assert not score.comparable and score.macro_f1 is None and model.frames == []
    assert "not comparable" in score.reason and "v2" in score.reason
    assert score.to_dict() == {"version": "2", "comparable": False, "reason": score.reason}


# ------------------------------------------------------------------------------------------------ version tags


def evaluation(threshold: float | None = 0.42) -> Evaluation:
    metrics = {"macro_f1": 0.91, "critical_recall": 0.97, "critical_precision": 0.8, "glare": {"delta_f1": 0.01}}
    metrics["per_class"] = {name: {"support": 9} for name in LABELS.names}
    calibration = {"threshold": threshold}
    return Evaluation(metrics, {}, calibration, "simple_cnn", {"height": 32, "width": 192}, LABELS)


def test_version_tags() -> None:
    report = evaluate_gates(evaluation().metrics, Gates(), "crack")
    integrity = {"weights_sha256": "w" * 64, "bundle_sha256": "b" * 64}
    tags = version_tags(report, evaluation(), "fp123", "abc123+dirty", integrity)
    assert all(isinstance(v, str) for v in tags.values())
    assert tags["gates_passed"] == "true" and tags["gates_reason"] == "all gates passed"
    assert json.loads(tags["gates"]) == json.loads(json.dumps(report.gates_dict()))  # the gates only, no verdict
    assert (tags["fingerprint"], tags["code_version"], tags["critical_class"]) == ("fp123", "abc123+dirty", "crack")
    assert (tags["threshold"], tags["macro_f1"]) == ("0.42", "0.91")
    assert tags["weights_sha256"] == "w" * 64 and tags["bundle_sha256"] == "b" * 64


def test_version_tags_of_failed_gates_and_a_long_gate_table() -> None:
    report = GateReport({}, FAILED)
    failed = version_tags(report, evaluation(None), "fp", "v", {})
    assert failed["gates_passed"] == "false" and failed["gates_reason"] == "failed: macro_f1"
    assert failed["threshold"] == "None"
    big = evaluate_gates(
        {**evaluation().metrics, "per_class": {f"c{i}": {"support": 1} for i in range(900)}}, Gates(), "c1"
    )
    assert len(version_tags(big, evaluation(), "fp", "v", {})["gates"]) <= 4900


@pytest.mark.parametrize(
    ("uri", "model_id"),
    [
        ("models:/m-1d3344583f6d4adb973d45f0fb624aeb", "m-1d3344583f6d4adb973d45f0fb624aeb"),
        ("models:/steel-defect-classifier/3", None),
        ("models:/steel-defect-classifier@champion", None),
        ("runs:/abc/model", None),
        ("/tmp/model", None),
    ],
)
def test_a_logged_model_uri_names_its_model_id(uri: str, model_id: str | None) -> None:
    """Registration passes the logged model's id with its ``models:/m-...`` source (a tracking server needs it)."""
    assert logged_model_id(uri) == model_id
