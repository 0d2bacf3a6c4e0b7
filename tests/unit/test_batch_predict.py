"""The streaming predictor (tasks/model/batch_predict.py) with a fake scorer: order, error records, the calibrated
decision, the bounded in-flight window, laziness, and the decision log."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.batch_predict import (
    DECISION_LOG_FIELDS,
    DecisionLog,
    Loaded,
    Scored,
    Scorer,
    file_loader,
    predict_stream,
    walk_images,
)

SPACE = LabelSpace({0: "ok", 1: "crack", 2: "scratch"}, "crack")
SPEC = InputSpec(height=8, width=16)


def fixed_scorer(proba_row: list[float], threshold: float | None = None, calls: list[int] | None = None) -> Scorer:
    """Every image gets ``proba_row``; ``calls`` collects the batch sizes scored."""

    def score(batch: np.ndarray) -> Scored:
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, SPEC.height, SPEC.width)
        if calls is not None:
            calls.append(len(batch))
        return Scored(np.tile(np.asarray(proba_row, np.float32), (len(batch), 1)))

    return Scorer(score, SPACE, SPEC, threshold, "models:/m/1", "1", "fake")


def write_png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((16, 32), value, np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return [write_png(tmp_path / f"img_{i:02d}.png", 10 * i) for i in range(7)]


def test_records_in_order_with_hashes_and_a_corrupt_image_gets_an_error(images: list[Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(images[0].read_bytes()[:40])  # a truncated PNG
    inputs = [*images[:3], corrupt, tmp_path / "missing.png", *images[3:]]
    calls: list[int] = []
    records = list(predict_stream(inputs, fixed_scorer([0.6, 0.1, 0.3], calls=calls), batch_size=3, workers=2))
    assert [r["image"] for r in records] == [str(p) for p in inputs]
    bad = {r["image"]: r for r in records if r.get("error")}
    assert set(bad) == {str(corrupt), str(tmp_path / "missing.png")}
    assert "unreadable image" in bad[str(corrupt)]["error"] and bad[str(corrupt)]["label"] is None
    assert bad[str(corrupt)]["sha256"] == hashlib.sha256(corrupt.read_bytes()).hexdigest()
    assert bad[str(tmp_path / "missing.png")]["error"] == "no such file"
    good = [r for r in records if not r.get("error")]
    assert len(good) == 7 and sum(calls) == 7, "every readable image scored once"
    for record in good:
        assert record["sha256"] == hashlib.sha256(Path(record["image"]).read_bytes()).hexdigest()
        assert record["probabilities"] == pytest.approx({"ok": 0.6, "crack": 0.1, "scratch": 0.3})
        assert record["label"] == "ok" and record["critical"] is False
        assert record["critical_probability"] == pytest.approx(0.1)


def test_the_calibrated_threshold_decides(images: list[Path]) -> None:
    row = [0.6, 0.25, 0.15]
    plain = list(predict_stream(images[:2], fixed_scorer(row, threshold=None)))
    calibrated = list(predict_stream(images[:2], fixed_scorer(row, threshold=0.2)))
    above = list(predict_stream(images[:2], fixed_scorer(row, threshold=0.3)))
    assert [r["label"] for r in plain] == ["ok", "ok"]
    assert [r["label"] for r in calibrated] == ["crack", "crack"] and all(r["critical"] for r in calibrated)
    assert [r["label_id"] for r in calibrated] == [1, 1]
    assert [r["label"] for r in above] == ["ok", "ok"]


def test_the_in_flight_window_is_bounded_and_the_input_is_read_lazily(images: list[Path]) -> None:
    """An endless input: the stream yields records while at most ``max_in_flight`` images are held."""
    lock = threading.Lock()
    loaded, yielded, held = [0], [0], []
    data = images[0].read_bytes()

    def counting_load(item: int) -> Loaded:
        with lock:
            loaded[0] += 1
            held.append(loaded[0] - yielded[0])
        return Loaded(f"image-{item}", data)

    stream = predict_stream(
        itertools.count(), fixed_scorer([0.2, 0.3, 0.5]), counting_load, batch_size=4, workers=3, max_in_flight=10
    )
    for record in itertools.islice(stream, 60):
        assert record["label"] == "scratch"
        with lock:
            yielded[0] += 1
    stream.close()
    assert yielded[0] == 60 and max(held) <= 10, f"at most 10 images held, saw {max(held)}"
    assert loaded[0] <= 60 + 10, "the input is read only as far as the window needs"
    assert max(held) >= 5, "the pool reads ahead while a batch is scored"


def test_a_loader_that_raises_gives_an_error_record(images: list[Path]) -> None:
    def load(item: object) -> Loaded:
        if item == "boom":
            raise ConnectionError("download failed")
        return file_loader()(item)

    records = list(predict_stream([images[0], "boom", images[1]], fixed_scorer([0.5, 0.2, 0.3]), load))
    assert [bool(r.get("error")) for r in records] == [False, True, False]
    assert "ConnectionError: download failed" in records[1]["error"]


def test_walk_images_is_sorted_and_skips_hidden_folders(tmp_path: Path) -> None:
    for rel in ("b/2.png", "a/1.png", "a/0.txt", ".hidden/3.png", "c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = list(walk_images(tmp_path, lambda name: name.endswith(".png")))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["c.png", "a/1.png", "b/2.png"]


def test_the_decision_log_appends_one_line_a_record_to_the_day_file(images: list[Path], tmp_path: Path) -> None:
    scorer = fixed_scorer([0.1, 0.7, 0.2], threshold=0.5)
    records = list(predict_stream([*images[:3], tmp_path / "missing.png"], scorer))
    folder = tmp_path / "decisions"
    clock = iter(["2026-12-04T23:59:59.900Z", "2026-12-04T23:59:59.950Z", "2026-12-05T00:00:00.010Z"] * 3)
    with DecisionLog(folder, scorer.meta(), clock=lambda: next(clock)) as log:
        for record in records[:3]:
            log.append(record)
    with DecisionLog(folder, scorer.meta(), clock=lambda: "2026-12-05T08:00:00.000Z") as log:
        log.append(records[3])  # a second writer appends, never truncates
    day1 = [json.loads(line) for line in (folder / "2026-12-04.jsonl").read_text().splitlines()]
    day2 = [json.loads(line) for line in (folder / "2026-12-05.jsonl").read_text().splitlines()]
    assert len(day1) == 2 and len(day2) == 2
    for line in day1 + day2:
        assert tuple(line) == DECISION_LOG_FIELDS
        assert line["model"] == "models:/m/1" and line["model_version"] == "1" and line["format"] == "fake"
        assert line["threshold"] == 0.5 and line["critical_class"] == "crack"
    assert [line["image"] for line in day1 + day2] == [r["image"] for r in records]
    assert day1[0]["decision"] == "crack" and day1[0]["probabilities"]["crack"] == pytest.approx(0.7)
    assert day1[0]["sha256"] == hashlib.sha256(images[0].read_bytes()).hexdigest()
    assert day2[1]["error"] == "no such file" and day2[1]["decision"] is None
