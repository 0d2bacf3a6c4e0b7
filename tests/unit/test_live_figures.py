"""Live precision and recall from reviewed labels, on fixed records."""

from __future__ import annotations

import pytest

from steelqc.monitoring.live_figures import is_live, is_missed_critical, live_figures, record_version

CLASSES = ["ok", "crack", "scratch"]


def rec(sha: str, label: str | None, guess: str | None, run: str = "r1", **extra) -> dict:
    return {"sha256": sha, "reviewed_as": label, "predicted": guess, "monitoring_run": run, **extra}


RECORDS = [
    rec("a", "crack", "crack"),
    rec("b", "crack", "ok"),  # a missed crack
    rec("c", "ok", "ok"),
    rec("d", "ok", "crack"),
    rec("e", "scratch", "crack", run="r2"),
    rec("f", "crack", "scratch", run="r2"),  # a missed crack of the other version
    rec("g", "ok", None),  # no recorded guess: not counted
    rec("h", None, "ok"),  # not reviewed: not counted
]


def by_class(figures: dict) -> dict:
    return {row["class"]: row for row in figures["classes"]}


def test_precision_recall_support_per_class() -> None:
    figures = live_figures(RECORDS, CLASSES, "crack")
    assert figures["n_reviewed"] == 6
    crack = by_class(figures)["crack"]
    assert crack["support"] == 3 and crack["predicted"] == 3
    assert crack["precision"] == pytest.approx(1 / 3) and crack["recall"] == pytest.approx(1 / 3)
    ok = by_class(figures)["ok"]
    assert (ok["support"], ok["predicted"], ok["precision"], ok["recall"]) == (2, 2, 0.5, 0.5)
    scratch = by_class(figures)["scratch"]
    assert (scratch["support"], scratch["predicted"], scratch["precision"], scratch["recall"]) == (1, 1, 0.0, 0.0)
    assert [m["sha256"] for m in figures["missed_critical"]] == ["b", "f"]


def test_one_model_version_and_empty_ratios() -> None:
    versions = {"r1": "3", "r2": "4"}
    figures = live_figures(RECORDS, CLASSES, "crack", version="4", run_versions=versions)
    assert figures["n_reviewed"] == 2 and figures["model_version"] == "4"
    ok = by_class(figures)["ok"]
    assert (ok["support"], ok["predicted"], ok["precision"], ok["recall"]) == (0, 0, None, None)
    [missed] = figures["missed_critical"]
    assert missed["sha256"] == "f" and missed["predicted"] == "scratch" and missed["model_version"] == "4"
    assert live_figures([], CLASSES, "crack")["n_reviewed"] == 0


def test_record_version_and_missed_critical() -> None:
    assert record_version(rec("a", "ok", "ok", model_version=7), {"r1": "3"}) == "7"
    assert record_version(rec("a", "ok", "ok"), {"r1": "3"}) == "3"
    assert record_version(rec("a", "ok", "ok")) is None
    assert is_missed_critical(rec("a", "crack", "ok"), "crack")
    assert not is_missed_critical(rec("a", "crack", "crack"), "crack")
    assert not is_missed_critical(rec("a", "ok", "crack"), "crack")
    assert not is_missed_critical(rec("a", "crack", None), "crack")


def test_records_a_training_run_queued_count_in_no_live_figure() -> None:
    trained = {"training_run": "t1", "model_version": "4", "label": "crack"}
    records = [
        {"sha256": "x", "reviewed_as": "crack", "predicted": "ok", **trained},  # the data was right: a real miss
        {"sha256": "y", "reviewed_as": "ok", "predicted": "ok", **trained},
        rec("a", "crack", "crack"),
    ]
    figures = live_figures(records, CLASSES, "crack")
    assert figures["n_reviewed"] == 1 and figures["missed_critical"] == []
    assert not is_missed_critical(records[0], "crack") and is_live(records[2]) and not is_live(records[0])
