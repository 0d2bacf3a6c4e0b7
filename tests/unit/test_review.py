"""Picking images for review (pure, seeded) and the local review queue (one entry per content, idempotent)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from steelqc.monitoring.review import REASONS, open_review_queue, select_for_review
from steelqc.tasks.config import Settings
from tests.helpers import free_port, write_image


def batch(n: int = 20) -> pd.DataFrame:
    """``n`` records: confidence rising with the index, critical probability far from 0.5, none novel."""
    return pd.DataFrame(
        {
            "uri": [f"/inbox/{i:02d}.png" for i in range(n)],
            "sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
            "predicted": ["ok"] * n,
            "confidence": [0.5 + i / (2 * n) for i in range(n)],
            "critical_proba": [0.01] * n,
            "novel": [False] * n,
        }
    )


def reasons_by_uri(picked: pd.DataFrame) -> dict[str, list[str]]:
    return dict(zip(picked["uri"], picked["reasons"], strict=True))


SELECT = {"least_confident": 2, "margin": 0.1, "threshold": 0.5, "drifted": False, "drift_sample": 0, "seed": 0}


def test_each_reason_and_merging() -> None:
    records = batch(10)
    records.loc[1, "critical_proba"] = 0.45  # least confident AND near the threshold
    records.loc[5, "critical_proba"] = 0.6  # exactly margin away: picked
    records.loc[6, "critical_proba"] = 0.61  # just outside
    records.loc[7, "novel"] = True
    records.loc[0, "novel"] = True

    picked = select_for_review(records, **SELECT)

    assert reasons_by_uri(picked) == {
        "/inbox/00.png": ["least-confident", "novel"],
        "/inbox/01.png": ["least-confident", "near-critical-threshold"],
        "/inbox/05.png": ["near-critical-threshold"],
        "/inbox/07.png": ["novel"],
    }
    assert list(picked.columns) == [*records.columns, "reasons"]
    assert picked["sha256"].tolist() == records.loc[[0, 1, 5, 7], "sha256"].tolist()


def test_least_confident_picks_the_lowest_confidence() -> None:
    records = batch(6).sample(frac=1, random_state=3)  # order of rows must not matter
    picked = select_for_review(records, **{**SELECT, "least_confident": 3, "threshold": None})
    assert sorted(picked["uri"]) == ["/inbox/00.png", "/inbox/01.png", "/inbox/02.png"]
    assert select_for_review(records, **{**SELECT, "least_confident": 0, "threshold": None}).empty


def test_no_threshold_means_no_near_threshold_reason() -> None:
    records = batch(5)
    records["critical_proba"] = 0.5
    picked = select_for_review(records, **{**SELECT, "least_confident": 0, "threshold": None})
    assert picked.empty and "reasons" in picked.columns
    picked = select_for_review(records, **{**SELECT, "least_confident": 0})
    assert len(picked) == 5


def test_drift_sample_is_seeded_and_drawn_from_the_rest() -> None:
    records = batch(20)
    records.loc[10, "novel"] = True
    args = {**SELECT, "drifted": True, "drift_sample": 5}

    picked = select_for_review(records, **args)
    sampled = [u for u, r in reasons_by_uri(picked).items() if r == ["drift-sample"]]
    assert len(sampled) == 5
    assert not {"/inbox/00.png", "/inbox/01.png", "/inbox/10.png"} & set(sampled)  # only rows not picked already
    assert len(picked) == 8 and picked["uri"].is_unique
    assert select_for_review(records, **args)["uri"].tolist() == picked["uri"].tolist()  # same seed, same pick
    draws = {tuple(select_for_review(records, **{**args, "seed": s})["uri"]) for s in range(5)}
    assert len(draws) > 1  # the seed decides

    assert (
        not select_for_review(records, **{**args, "drifted": False})["reasons"].map(lambda r: "drift-sample" in r).any()
    )
    everything = select_for_review(records, **{**args, "drift_sample": 100})
    assert len(everything) == 20  # capped at the rows left


def test_near_threshold_and_novel_are_capped_closest_and_most_novel_first() -> None:
    """A low calibrated threshold puts most OK images within the margin: the queue takes the closest few, not all."""
    records = batch(12).sample(frac=1, random_state=5)  # order of rows must not matter
    offsets = (0.0, 0.01, -0.02, 0.03, -0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.3)
    records["critical_proba"] = [0.5 + d for d in offsets]
    records["novel"] = [True] * 6 + [False] * 6
    records["novelty"] = [1.0, 5.0, 3.0, float("nan"), 4.0, 2.0] + [9.0] * 6
    args = {**SELECT, "least_confident": 0}

    picked = select_for_review(records, **args, near_threshold=3, most_novel=2)
    near = {u for u, r in reasons_by_uri(picked).items() if "near-critical-threshold" in r}
    novel = {u for u, r in reasons_by_uri(picked).items() if "novel" in r}
    distance = (records["critical_proba"] - 0.5).abs()
    assert near == set(records.loc[distance.nsmallest(3).index, "uri"])
    assert novel == set(records.loc[records["novel"]].nlargest(2, "novelty")["uri"])
    assert select_for_review(records, **args, near_threshold=3, most_novel=2)["uri"].tolist() == picked["uri"].tolist()

    everything = select_for_review(records, **args)  # no caps: every candidate
    assert everything["reasons"].map(lambda r: "near-critical-threshold" in r).sum() == 11
    assert everything["reasons"].map(lambda r: "novel" in r).sum() == 6
    assert select_for_review(records, **args, near_threshold=0, most_novel=0).empty


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="novel"):
        select_for_review(batch(3).drop(columns=["novel"]), **SELECT)


# ------------------------------------------------------------------------------------------- the queue


def image_rows(folder: Path, n: int) -> pd.DataFrame:
    """``n`` tiny PNGs in ``folder`` as picked records with their real hashes."""
    rows = []
    for i in range(n):
        path = write_image(folder / f"img{i}.PNG", (8, 8), "PNG", seed=i)
        rows.append(
            {
                "uri": str(path),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "predicted": "crack",
                "confidence": 0.4 + i / 10,
                "critical_proba": 0.45,
                "novel": False,
                "novelty": 0.25,
                "reasons": ["least-confident"],
            }
        )
    return pd.DataFrame(rows)


def test_local_queue_writes_one_entry_per_hash_with_a_copy_of_the_image(tmp_path: Path) -> None:
    rows = image_rows(tmp_path / "inbox", 2)
    queue = open_review_queue(str(tmp_path / "review"), Settings())

    assert queue.add(rows, run_id="run-1") == 2

    for row in rows.to_dict("records"):
        entry = json.loads((tmp_path / "review" / "queue" / f"{row['sha256']}.json").read_text())
        copy = tmp_path / "review" / "images" / f"{row['sha256']}.png"
        assert entry["image"] == str(copy)
        assert copy.read_bytes() == Path(row["uri"]).read_bytes()
        assert entry["source_uri"] == row["uri"]
        assert entry["reasons"] == ["least-confident"]
        assert (entry["predicted"], entry["confidence"], entry["critical_proba"]) == (
            "crack",
            row["confidence"],
            0.45,
        )
        assert (entry["novelty"], entry["monitoring_run"], entry["sha256"]) == (0.25, "run-1", row["sha256"])
        assert entry["queued_at"].endswith("+00:00")
    assert [e["sha256"] for e in queue.list()] == sorted(rows["sha256"])


def test_adding_again_merges_reasons_and_never_duplicates(tmp_path: Path) -> None:
    rows = image_rows(tmp_path / "inbox", 2)
    queue = open_review_queue(str(tmp_path / "review"), Settings())
    queue.add(rows, run_id="run-1")
    first = {e["sha256"]: e for e in queue.list()}

    assert queue.add(rows, run_id="run-2") == 0
    again = rows.copy()
    again["reasons"] = [["novel", "least-confident"], ["least-confident"]]
    assert queue.add(again, run_id="run-3") == 0

    entries = {e["sha256"]: e for e in queue.list()}
    assert len(entries) == 2 and len(list((tmp_path / "review" / "queue").iterdir())) == 2
    assert len(list((tmp_path / "review" / "images").iterdir())) == 2
    changed = entries[rows.loc[0, "sha256"]]
    assert changed["reasons"] == ["least-confident", "novel"]
    assert changed["monitoring_run"] == "run-1"
    assert changed["queued_at"] == first[rows.loc[0, "sha256"]]["queued_at"]
    assert entries[rows.loc[1, "sha256"]] == first[rows.loc[1, "sha256"]]


def test_local_queue_copies_a_fetched_s3_image_from_source(tmp_path: Path) -> None:
    rows = image_rows(tmp_path / "fetched", 1)
    local = Path(rows.loc[0, "uri"])
    rows.loc[0, "uri"] = "s3://factory/inbox/img0.PNG"
    nothing_there = Settings(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")  # S3 must not be needed
    queue = open_review_queue(str(tmp_path / "review"), nothing_there)

    assert queue.add(rows, run_id="r", source={"s3://factory/inbox/img0.PNG": local}) == 1

    [entry] = queue.list()
    assert entry["source_uri"] == "s3://factory/inbox/img0.PNG"
    assert Path(entry["image"]).read_bytes() == local.read_bytes()


def test_an_image_whose_content_changed_is_not_queued(tmp_path: Path) -> None:
    rows = image_rows(tmp_path / "inbox", 2)
    write_image(Path(rows.loc[0, "uri"]), (8, 8), "PNG", seed=99)  # replaced after it was hashed
    queue = open_review_queue(str(tmp_path / "review"), Settings())

    assert queue.add(rows, run_id="r") == 1
    assert [e["sha256"] for e in queue.list()] == [rows.loc[1, "sha256"]]
    assert not (tmp_path / "review" / "images" / f"{rows.loc[0, 'sha256']}.png").exists()


def test_a_hash_that_is_not_sha256_is_refused(tmp_path: Path) -> None:
    rows = image_rows(tmp_path / "inbox", 1)
    rows.loc[0, "sha256"] = "../../escape"
    queue = open_review_queue(str(tmp_path / "review"), Settings())
    with pytest.raises(ValueError, match="not a SHA-256"):
        queue.add(rows, run_id="r")
    assert queue.list() == []


# ------------------------------------------------------------------------------- queued by a training run


def training_rows(folder: Path, n: int) -> pd.DataFrame:
    """``n`` tiny PNGs as a training run's review candidates (tasks/evaluation/label_issues.py)."""
    rows = image_rows(folder, n).drop(columns=["novelty"])
    rows["label"], rows["split"] = "scratch", "test"
    rows["predicted"], rows["confidence"] = "crack", 0.97
    rows["reasons"] = [["confident-mistake", "suspected-label-error"]] * n
    return rows


def test_a_training_run_entry_names_the_run_the_data_label_and_the_version(tmp_path: Path) -> None:
    rows = training_rows(tmp_path / "data", 1)
    queue = open_review_queue(str(tmp_path / "review"), Settings())

    assert queue.add(rows, run_id="train-run-1", origin="training", model_version="5") == 1

    [entry] = queue.list()
    assert (entry["training_run"], entry["label"], entry["split"], entry["model_version"]) == (
        "train-run-1", "scratch", "test", "5"
    )  # fmt: skip
    assert (entry["predicted"], entry["confidence"]) == ("crack", 0.97) and "monitoring_run" not in entry
    assert entry["reasons"] == ["suspected-label-error", "confident-mistake"]  # in REASONS' order
    assert REASONS.index("suspected-label-error") < REASONS.index("confident-mistake")


def test_the_drift_monitor_adding_the_same_image_merges_reasons_and_keeps_the_origin(tmp_path: Path) -> None:
    rows = training_rows(tmp_path / "data", 1)
    queue = open_review_queue(str(tmp_path / "review"), Settings())
    queue.add(rows, run_id="train-run-1", origin="training", model_version="5")
    picked = rows.drop(columns=["label", "split"]).assign(reasons=[["novel"]], predicted="ok")

    assert queue.add(picked, run_id="monitor-1", model_version="6") == 0

    [entry] = queue.list()
    assert entry["reasons"] == ["novel", "suspected-label-error", "confident-mistake"]
    assert (entry["training_run"], entry["model_version"], entry["predicted"]) == ("train-run-1", "5", "crack")
    assert "monitoring_run" not in entry


def test_a_monitoring_entry_carries_the_champion_version_and_gains_the_data_label(tmp_path: Path) -> None:
    rows = image_rows(tmp_path / "inbox", 1)
    queue = open_review_queue(str(tmp_path / "review"), Settings())
    assert queue.add(rows, run_id="monitor-1", model_version="4") == 1
    [entry] = queue.list()
    assert (entry["monitoring_run"], entry["model_version"]) == ("monitor-1", "4") and "label" not in entry

    assert queue.add(training_rows(tmp_path / "inbox", 1), run_id="train-run-2", origin="training") == 0
    [entry] = queue.list()
    assert (entry["monitoring_run"], entry["label"]) == ("monitor-1", "scratch") and "training_run" not in entry
    with pytest.raises(ValueError, match="origin 'nightly'"):
        queue.add(rows, run_id="x", origin="nightly")  # type: ignore[arg-type]
