"""Inputs are bounded before they are read: image pixels (every decoder call), CSV sizes (train.csv, label imports)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.imageio import UnsupportedImage, decode_image
from steelqc.tasks.data.ingest import IngestError, read_severstal_csv
from steelqc.tasks.features import FeatureDataset
from steelqc.tasks.model.batch_predict import _Preprocess, file_loader
from tests.helpers import alarm, png_bomb, run, write_image


def test_the_decoder_refuses_a_decompression_bomb_from_its_header(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png", width=10_000, height=6_000)  # 60 M pixels in a few bytes, under PIL's limit
    for source in (bomb, io.BytesIO(bomb.read_bytes())):  # a path (training) or bytes (predict, monitor, dashboard)
        with pytest.raises(UnsupportedImage, match=r"10000x6000 = 60000000 pixels, over the limit of 50000000"):
            decode_image(source)
    with pytest.raises(UnsupportedImage, match="over the limit of 1000"):
        decode_image(write_image(tmp_path / "ok.png", (40, 40), "PNG"), max_pixels=1000)
    assert decode_image(write_image(tmp_path / "ok.jpg", (40, 40))).shape == (40, 40)


def test_predict_and_the_monitor_take_the_pixel_and_byte_bounds_they_are_given(tmp_path: Path) -> None:
    """The settings' max_image_pixels and max_image_bytes reach predict's and the feature pass's decoders."""
    image = write_image(tmp_path / "ok.png", (40, 60), "PNG")
    spec = InputSpec(height=32, width=32, channels=1)
    assert FeatureDataset([image], spec)[0][2] == ""  # the defaults read it
    assert "over the limit of 1000" in FeatureDataset([image], spec, max_pixels=1000)[0][2]
    assert "more than max_image_bytes (10) bytes: refused unread" in FeatureDataset([image], spec, max_bytes=10)[0][2]
    assert _Preprocess(spec, file_loader())(image).error is None
    refused = _Preprocess(spec, file_loader(), max_pixels=1000)(image)
    assert refused.tensor is None and "over the limit of 1000" in str(refused.error)


def test_train_csv_over_max_csv_bytes_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = tmp_path / "data" / "train.csv"  # the home is tmp_path/steelqc-home: beside the data, not in it
    csv.parent.mkdir()
    csv.write_text("ImageId,ClassId,EncodedPixels\n" + "a.jpg,1,1 5\n" * 20)
    with pytest.raises(IngestError, match=r"over max_csv_bytes \(100\): refused unread") as caught:
        read_severstal_csv(csv, {1, 2, 3, 4}, (256, 1600), max_bytes=100)
    assert caught.value.file == str(csv)
    assert read_severstal_csv(csv, {1, 2, 3, 4}, (256, 1600)).kind == "new"  # the default limit reads it
    monkeypatch.setenv("STEELQC_MAX_CSV_BYTES", "100")
    code, out, _ = run("ingest", str(csv.parent), "--json")
    assert code == 2 and out["file"] == str(csv) and "max_csv_bytes" in out["error"], out


def test_label_imports_are_bounded_and_never_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "labels.csv"
    big.write_text("image,label,reviewer\n" + "abcdef1,crack,ann\n" * 50)
    monkeypatch.setenv("STEELQC_MAX_CSV_BYTES", "200")
    code, out, _ = run("review", "import", str(big), "--json")
    assert code == 2 and out["file"] == str(big) and "over max_csv_bytes (200)" in out["error"], out
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    with alarm(60):  # a FIFO would block a plain read for ever
        code, out, _ = run("review", "import", str(fifo), "--json")
    assert code == 2 and "not a regular file" in out["error"], out
