"""A training run's review candidates (tasks/evaluation/label_issues.py, real cleanlab) and the step that queues them
(flows/steps.py, called without Prefect)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steelqc.flows.steps import queue_review_candidates_step
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.label_issues import (
    CANDIDATE_COLUMNS,
    CANDIDATES_FILE,
    PROBABILITIES_FILE,
    confident_mistakes,
    probability_frame,
    read_probabilities,
    review_candidates,
    suspected_label_errors,
)
from tests.helpers import write_image

NAMES = ["ok", "crack", "scratch", "dent"]
CRACK_AS_SCRATCH, DENT_AS_OK, UNSURE = 12, 35, 5


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """40 images, 10 a class, predicted confidently right (0.8-0.95 on the true class), but for two planted label
    flips the model is sure of (a crack labelled scratch, a dent labelled ok: 0.97 on the true class) and one image
    labelled ok that the model leans to crack, unsure (0.5 against 0.45)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(NAMES)), 10)
    proba = rng.uniform(0.0, 0.05, (len(truth), len(NAMES)))
    proba[np.arange(len(truth)), truth] = rng.uniform(0.8, 0.95, len(truth))
    proba /= proba.sum(axis=1, keepdims=True)
    labels = truth.copy()
    labels[CRACK_AS_SCRATCH], proba[CRACK_AS_SCRATCH] = 2, [0.01, 0.97, 0.01, 0.01]
    labels[DENT_AS_OK], proba[DENT_AS_OK] = 0, [0.02, 0.005, 0.005, 0.97]
    proba[UNSURE] = [0.45, 0.5, 0.03, 0.02]
    return labels, proba


def rows_for(labels: np.ndarray, paths: list[str] | None = None) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame(
        {
            "image_id": [f"img{i:02d}" for i in range(n)],
            "path": paths or [f"/data/img{i:02d}.png" for i in range(n)],
            "sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
            "split": ["val" if i % 2 else "test" for i in range(n)],
            "label": [NAMES[k] for k in labels],
            "label_index": labels,
        }
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cleanlab_finds_the_planted_label_flips_most_suspect_first(seed: int) -> None:
    labels, proba = planted(seed)
    found, notes = suspected_label_errors(labels, proba, 10, NAMES)
    # ranked by self-confidence: the crack labelled scratch has 0.01 on its label, the dent labelled ok 0.02
    assert found == [CRACK_AS_SCRATCH, DENT_AS_OK] and notes == []
    assert suspected_label_errors(labels, proba, 1, NAMES)[0] == [CRACK_AS_SCRATCH]  # the cap
    assert suspected_label_errors(np.argmax(proba, axis=1), proba, 10)[0] == []  # labels as the model says them


def test_confident_mistakes_rank_by_the_probability_of_the_wrong_class() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    proba = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.2, 0.7, 0.1],  # wrong, 0.7
            [0.05, 0.9, 0.05],  # right
            [0.95, 0.03, 0.02],  # wrong, 0.95
            [0.1, 0.5, 0.4],  # wrong, 0.5
        ]
    )
    assert confident_mistakes(labels, proba, 10) == [3, 1, 4]
    assert confident_mistakes(labels, proba, 2) == [3, 1]
    assert confident_mistakes(labels, proba, 0) == []


def test_candidates_carry_both_reasons_the_given_label_and_the_guess() -> None:
    labels, proba = planted()
    found = review_candidates(rows_for(labels), proba, NAMES, "crack", label_issues=20, mistakes=10)
    frame = found.frame
    assert list(frame.columns) == list(CANDIDATE_COLUMNS)
    assert frame["image_id"].tolist() == [f"img{i:02d}" for i in (CRACK_AS_SCRATCH, DENT_AS_OK, UNSURE)]
    assert frame["reasons"].tolist() == [
        ["suspected-label-error", "confident-mistake"],
        ["suspected-label-error", "confident-mistake"],
        ["confident-mistake"],  # the model is unsure of crack here: not a suspected label error
    ]
    first = frame.iloc[0]
    assert (first["uri"], first["label"], first["predicted"]) == ("/data/img12.png", "scratch", "crack")
    assert first["confidence"] == pytest.approx(0.97) and first["critical_proba"] == pytest.approx(0.97)
    assert frame.iloc[1]["critical_proba"] == pytest.approx(0.005) and not frame["novel"].any()
    assert frame["split"].tolist() == ["test", "val", "val"]


def test_caps_turn_either_kind_off() -> None:
    labels, proba = planted()
    rows = rows_for(labels)
    only_mistakes = review_candidates(rows, proba, NAMES, "crack", label_issues=0, mistakes=1).frame
    assert only_mistakes["reasons"].tolist() == [["confident-mistake"]]
    only_issues = review_candidates(rows, proba, NAMES, "crack", label_issues=1, mistakes=0).frame
    assert only_issues["reasons"].tolist() == [["suspected-label-error"]]
    none = review_candidates(rows, proba, NAMES, "crack", label_issues=0, mistakes=0)
    assert none.frame.empty and list(none.frame.columns) == list(CANDIDATE_COLUMNS) and none.notes == []


def test_degenerate_inputs_skip_cleanlab_with_a_reason_and_never_raise() -> None:
    empty = review_candidates(rows_for(np.array([], dtype=int)), np.zeros((0, 4)), NAMES, "crack", label_issues=5,
                              mistakes=5)  # fmt: skip
    assert empty.frame.empty and empty.notes == ["label issues: no evaluated image, cleanlab not run"]

    one_class = np.zeros(6, dtype=int)
    proba = np.tile([0.9, 0.05, 0.03, 0.02], (6, 1))
    proba[2] = [0.02, 0.95, 0.02, 0.01]  # labelled ok, the model says crack
    found = review_candidates(rows_for(one_class), proba, NAMES, "crack", label_issues=5, mistakes=5)
    assert found.notes == ["label issues: every evaluated image is labelled ok; cleanlab needs two classes, not run"]
    assert found.frame["reasons"].tolist() == [["confident-mistake"]]  # the mistakes still come through

    labels, proba = planted()
    nan = proba.copy()
    nan[0, 0] = np.nan
    assert suspected_label_errors(labels, nan, 5)[1] == [
        "label issues: the probabilities are not a finite n x classes array; cleanlab not run"
    ]
    assert suspected_label_errors(labels, proba, 0) == ([], [])


def test_absent_and_small_classes_are_noted() -> None:
    labels = np.array([0, 0, 0, 0, 0, 2])
    proba = np.tile([0.9, 0.04, 0.03, 0.03], (6, 1))
    proba[5] = [0.03, 0.04, 0.9, 0.03]
    found, notes = suspected_label_errors(labels, proba, 5, NAMES)
    assert found == []
    assert (
        notes[0]
        == "label issues: no evaluated image of crack, dent; cleanlab never suggests a class it has no image of"
    )
    assert notes[1].startswith("label issues: too few evaluated images of scratch")


def test_probabilities_file_round_trip(tmp_path: Path) -> None:
    labels, proba = planted()
    path = tmp_path / PROBABILITIES_FILE
    probability_frame(rows_for(labels), proba, NAMES).to_csv(path, index=False)
    rows, back, names = read_probabilities(path)
    assert names == NAMES and np.allclose(back, proba)
    assert rows["label_index"].tolist() == labels.tolist() and rows["split"].iloc[0] == "test"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a probabilities file"):
        read_probabilities(path)


def test_the_step_writes_the_candidates_and_queues_them_as_the_training_run(tmp_path: Path) -> None:
    labels, proba = planted()
    images = [str(write_image(tmp_path / "data" / f"{i:02d}.png", (8, 8), "PNG", seed=i)) for i in range(len(labels))]
    rows = rows_for(labels, images)
    rows["sha256"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in images]
    run_dir = tmp_path / "run"
    (run_dir / "evaluation").mkdir(parents=True)
    probability_frame(rows, proba, NAMES).to_csv(run_dir / "evaluation" / PROBABILITIES_FILE, index=False)
    space = LabelSpace({0: "ok", 1: "crack", 2: "scratch", 3: "dent"}, "crack")
    (run_dir / "state.json").write_text(json.dumps({"label_space": space.to_dict()}))
    overrides = {"review_dir": str(tmp_path / "review"), "review_confident_mistakes": 2}

    assert queue_review_candidates_step.fn(str(run_dir), "run-7", "3", overrides) == 2

    written = pd.read_csv(run_dir / "evaluation" / CANDIDATES_FILE)
    assert written["reasons"].tolist() == ["suspected-label-error;confident-mistake"] * 2
    entries = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "review" / "queue").glob("*.json")}
    entry = entries[rows.loc[CRACK_AS_SCRATCH, "sha256"]]
    assert (entry["training_run"], entry["model_version"], entry["label"], entry["predicted"]) == (
        "run-7", "3", "scratch", "crack"
    )  # fmt: skip
    assert "monitoring_run" not in entry and entry["split"] == "test"
    assert Path(entry["image"]).read_bytes() == Path(images[CRACK_AS_SCRATCH]).read_bytes()
    assert queue_review_candidates_step.fn(str(run_dir), "run-8", "4", overrides) == 0  # queued already
    off = {**overrides, "review_label_issues": 0, "review_confident_mistakes": 0}
    assert queue_review_candidates_step.fn(str(run_dir), "run-9", None, off) == 0
