"""The dashboard's *Review* page logic on a real review queue (filled by the drift monitor's own queue code): the
counts, one image at a time with the model's guess, one-click labels through the CLI's labelling code (moved to
reviewed, waiting for more votes, disputed), and the page itself through Streamlit's AppTest."""

from __future__ import annotations

import getpass
import hashlib
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from steelqc.dashboard import review
from steelqc.monitoring import review_labels
from steelqc.monitoring.review import open_review_queue
from steelqc.monitoring.review_labels import LabelError
from steelqc.tasks.config import Settings
from tests.helpers import write_image


def fill_queue(home: Path, n: int) -> list[str]:
    """``n`` small PNGs queued as the drift monitor queues them; their hashes, oldest first (the queue's own
    listing: by ``queued_at``, in seconds, then hash)."""
    settings = Settings()
    rows = []
    for i in range(n):
        path = write_image(home.parent / "inbox" / f"img{i}.png", (16, 24), "PNG", seed=i)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append({"uri": str(path), "sha256": sha, "predicted": "scratch", "confidence": 0.41 + i / 100,
                     "critical_proba": 0.3, "novel": i == 1, "reasons": ["least-confident"]})  # fmt: skip
    queue = open_review_queue(settings.review_queue, settings)
    assert queue.add(pd.DataFrame(rows), run_id="run-1") == n
    return [e["sha256"] for e in queue.list()]


def test_one_image_at_a_time_with_the_guess_and_counts(steelqc_home: Path) -> None:
    first, second = fill_queue(steelqc_home, 2)
    settings = Settings()
    desk = review.open_desk(settings)

    view = review.queue_view(desk)
    assert view.counts == {"queued": 2, "reviewed": 0, "disputed": 0}
    assert [e["sha256"] for e in view.pending] == [first, second] and view.disputed == []
    assert view.current is not None and view.current["sha256"] == first
    confidence = view.current["confidence"]
    assert review.guess(view.current) == {"predicted": "scratch", "confidence": confidence, "critical_proba": 0.3}
    line = review.describe(view.current)
    assert "queued for: least-confident" in line and f"model's guess: scratch (confidence {confidence:.3f})" in line
    data = review.image_bytes(view.current, settings.max_image_bytes)
    assert data is not None and hashlib.sha256(data).hexdigest() == first
    assert review.image_bytes(view.current, 10) is None  # larger than the limit
    assert review.class_choices(settings) == ["ok", "crack", "scratch", "dent", "other"]
    assert review.reviewer_name(None) == review.reviewer_name("  ") == getpass.getuser()


def test_one_click_moves_the_image_into_reviewed_and_advances(steelqc_home: Path) -> None:
    first, second = fill_queue(steelqc_home, 2)
    desk = review.open_desk(Settings())

    outcome = review.label(desk, first, "crack", "alice")

    target = steelqc_home / "reviewed" / "crack" / f"{first}.png"
    assert outcome.status == "reviewed" and str(target) in outcome.message
    assert hashlib.sha256(target.read_bytes()).hexdigest() == first
    view = review.queue_view(desk, "alice")
    assert view.counts == {"queued": 1, "reviewed": 1, "disputed": 0}
    assert view.current is not None and view.current["sha256"] == second
    with pytest.raises(LabelError, match="not in the review queue"):  # labelled meanwhile (another tab)
        review.label(desk, first, "crack", "bob")
    with pytest.raises(LabelError, match="class map"):
        review.label(desk, second, "rust", "alice")


def test_waiting_for_more_votes_then_disputed(steelqc_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEELQC_REVIEW_VOTES", "2")
    [sha] = fill_queue(steelqc_home, 1)
    desk = review.open_desk(Settings())

    waiting = review.label(desk, sha, "dent", "alice")
    assert waiting.status == "queued" and "waiting for more votes" in waiting.message
    assert review.queue_view(desk, "alice").current is None  # alice voted: it waits for someone else
    assert review.queue_view(desk, "bob").current["sha256"] == sha

    disputed = review.label(desk, sha, "crack", "bob")
    assert disputed.status == "disputed" and "alice: dent" in disputed.message and "bob: crack" in disputed.message
    view = review.queue_view(desk, "carol")
    assert view.current is None and [e["sha256"] for e in view.disputed] == [sha]
    assert view.counts == {"queued": 1, "reviewed": 0, "disputed": 1}

    settled = review.label(desk, sha, "dent", "bob")  # bob relabels: both agree
    assert settled.status == "reviewed"
    assert (steelqc_home / "reviewed" / "dent" / f"{sha}.png").is_file()


def test_an_s3_queue_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEELQC_REVIEW_DIR", "s3://bucket/review")
    with pytest.raises(LabelError, match="local folder"):
        review.open_desk(Settings())


def _review_page() -> None:
    from steelqc.dashboard import views  # noqa: PLC0415

    views.review_page()


@pytest.mark.slow
def test_the_page_labels_with_one_click(steelqc_home: Path) -> None:
    first, second = fill_queue(steelqc_home, 2)
    at = AppTest.from_function(_review_page, default_timeout=120).run()
    assert not at.exception
    assert [m.value for m in at.metric] == ["2", "0", "0"]
    assert at.text_input[0].value == getpass.getuser()
    at.text_input[0].set_value("alice").run()

    at.button(key=f"next-{first}-crack").click().run()

    assert not at.exception
    assert any("moved to" in s.value for s in at.success)
    assert (steelqc_home / "reviewed" / "crack" / f"{first}.png").is_file()
    assert [m.value for m in at.metric] == ["1", "0", "1"]
    assert any(b.key == f"next-{second}-ok" for b in at.button)  # advanced to the next image


def test_an_image_a_training_run_queued_shows_the_data_label(steelqc_home: Path) -> None:
    settings = Settings()
    path = write_image(steelqc_home.parent / "data" / "scratch.png", (16, 24), "PNG", seed=3)
    row = {"uri": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "label": "scratch",
           "split": "val", "predicted": "crack", "confidence": 0.97, "critical_proba": 0.97, "novel": False,
           "reasons": ["confident-mistake"]}  # fmt: skip
    queue = open_review_queue(settings.review_queue, settings)
    assert queue.add(pd.DataFrame([row]), run_id="train-1", origin="training", model_version="2") == 1

    entry = review.queue_view(review.open_desk(settings)).current
    assert entry is not None
    line = review.describe(entry)
    assert line.startswith("queued for: confident-mistake; labelled scratch in the data (val image of training run ")
    assert "model's guess: crack (confidence 0.970)" in line
    summary = review_labels.summary_of(entry)
    assert (summary["label"], summary["training_run"], summary["model_version"]) == ("scratch", "train-1", "2")
