"""A real training run queues its review candidates: the session's tiny champion (`steelqc train`, real Prefect,
MLflow and cleanlab) left its evaluated images' probabilities, its candidates and their queue entries behind."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from steelqc.tasks.config import Settings
from steelqc.tasks.evaluation.label_issues import (
    CANDIDATES_FILE,
    PROBABILITIES_FILE,
    read_probabilities,
    review_candidates,
)
from tests.helpers import Champion


def test_the_training_run_queued_its_suspected_label_errors_and_confident_mistakes(champion: Champion) -> None:
    summary = champion.summary
    evaluation = Path(summary["run_dir"]) / "evaluation"
    rows, proba, names = read_probabilities(evaluation / PROBABILITIES_FILE)
    # every validation and test image, with the probabilities the evaluation computed (rows sum to 1)
    for split in ("val", "test"):
        assert (rows["split"] == split).sum() == sum(summary["splits"][split].values()), split
    assert len(rows) and abs(proba.sum(axis=1) - 1).max() < 1e-4
    assert summary["artifacts"]["probabilities"] == str(evaluation / PROBABILITIES_FILE)

    defaults = Settings.model_fields
    expected = review_candidates(
        rows, proba, names, Settings().critical_class,
        label_issues=defaults["review_label_issues"].default, mistakes=defaults["review_confident_mistakes"].default,
    ).frame  # fmt: skip
    written = pd.read_csv(evaluation / CANDIDATES_FILE, dtype={"sha256": str})
    assert written["sha256"].tolist() == expected["sha256"].tolist()
    assert written["reasons"].tolist() == [";".join(r) for r in expected["reasons"]]
    wrong = int((proba.argmax(axis=1) != rows["label_index"].to_numpy()).sum())
    assert wrong > 0 and len(expected) > 0  # the tiny model errs on this data: there is something to queue
    assert expected["reasons"].map(lambda r: "confident-mistake" in r).sum() == min(wrong, 10)

    queue = champion.home / "review" / "queue"
    entries = {p.stem: json.loads(p.read_text()) for p in queue.glob("*.json")}
    assert set(entries) == set(expected["sha256"])
    for candidate in expected.to_dict("records"):
        entry = entries[candidate["sha256"]]
        assert entry["training_run"] == summary["run_id"] and "monitoring_run" not in entry
        assert entry["model_version"] == str(summary["model_version"])
        assert (entry["label"], entry["predicted"], entry["split"]) == (
            candidate["label"], candidate["predicted"], candidate["split"]
        )  # fmt: skip
        assert entry["reasons"] == candidate["reasons"] and entry["source_uri"] == candidate["uri"]
        assert Path(entry["image"]).is_file()
