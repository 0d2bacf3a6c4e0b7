"""Image features for drift and novelty: photometric values, one pass of the model, projection, novelty, storage."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.features import (
    PHOTOMETRIC,
    Novelty,
    Projection,
    Reference,
    build_reference,
    extract,
    feature_workers,
    features_frame,
    photometric_features,
)
from steelqc.tasks.model.models import build_model
from tests.helpers import LABELS, SHAPE, alarm, make_split

SPEC = InputSpec(height=SHAPE[0], width=SHAPE[1])


def _features(img: np.ndarray) -> dict[str, float]:
    return dict(zip(PHOTOMETRIC, photometric_features(img).tolist(), strict=True))


def test_photometric_features_of_known_images() -> None:
    half = np.zeros((10, 20), np.uint8)
    half[:, 10:] = 255  # half black, half white
    f = _features(half)
    assert f["brightness_mean"] == pytest.approx(0.5)
    assert f["brightness_std"] == pytest.approx(0.5)
    assert f["contrast"] == pytest.approx(1.0)
    assert f["saturated_share"] == pytest.approx(0.5) and f["dark_share"] == pytest.approx(0.5)
    flat = _features(np.full((10, 20), 128, np.uint8))
    assert flat["brightness_std"] == 0 and flat["contrast"] == 0 and flat["sharpness"] == 0
    assert flat["saturated_share"] == 0 and flat["dark_share"] == 0
    noisy = np.random.default_rng(0).integers(100, 156, (10, 20), dtype=np.uint8)
    assert _features(noisy)["sharpness"] > _features(np.sort(noisy, axis=1))["sharpness"]  # edges, not level


def test_brightening_moves_brightness_and_saturation_only_upwards() -> None:
    img = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    bright = np.clip(img.astype(int) + 51, 0, 255).astype(np.uint8)
    a, b = _features(img), _features(bright)
    assert b["brightness_mean"] > a["brightness_mean"] and b["saturated_share"] > a["saturated_share"]
    assert b["dark_share"] < a["dark_share"]


def test_photometric_features_refuse_what_is_not_a_grey_uint8_image() -> None:
    with pytest.raises(ValueError, match="uint8 grey"):
        photometric_features(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 grey"):
        photometric_features(np.zeros((4, 4), np.float32))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("blobs")
    return make_split(root / "train", 24, seed=1), make_split(root / "val", 12, seed=2)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net, _ = build_model("simple_cnn", LABELS.num_classes)
    return net.eval()


def test_one_pass_gives_embedding_and_the_model_probabilities(model, images) -> None:
    train, _ = images
    raw = extract(model, "simple_cnn", SPEC, train["path"].tolist()[:5], batch_size=2, progress=False)
    assert raw.embedding.shape == (5, 128) and raw.photometric.shape == (5, len(PHOTOMETRIC))
    assert raw.ok.all()
    assert [layer.shape for layer in raw.layers] == [(5, 64), (5, 128), (5, 256)], "channel means and stds per block"
    # the embedding is what the head sees: the head applied to it gives the probabilities
    head = model.classifier
    proba = torch.softmax(head(torch.from_numpy(raw.embedding)), dim=1).detach().numpy()
    np.testing.assert_allclose(proba, raw.proba, atol=1e-5)


def test_an_unreadable_image_gets_its_reason_and_the_others_go_on(model, images, tmp_path: Path) -> None:
    train, _ = images
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(train["path"][0]).read_bytes()[:40])
    paths = [train["path"][1], str(broken), train["path"][2]]
    raw = extract(model, "simple_cnn", SPEC, paths, batch_size=2, progress=False)
    assert raw.ok.tolist() == [True, False, True]
    assert "broken" in raw.errors[1] or "Error" in raw.errors[1]
    frame = features_frame(raw, Projection.fit(raw.subset(raw.ok).embedding, 1), None, LABELS, None)
    assert frame["path"].tolist() == [paths[0], paths[2]]


class NotePid:
    """An identity "corruption" that notes which process decoded each image (picklable, for any start method)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, img: np.ndarray, name: str) -> np.ndarray:
        (self.folder / f"{os.getpid()}-{name}").touch()
        return img


def test_worker_processes_give_the_same_features_in_the_same_order(model, images, tmp_path: Path) -> None:
    train, _ = images
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(train["path"][0]).read_bytes()[:40])
    paths = [*train["path"].tolist()[:4], str(broken), *train["path"].tolist()[4:7]]
    inline = extract(model, "simple_cnn", SPEC, paths, batch_size=3, progress=False)
    decoded_by = tmp_path / "pids"
    decoded_by.mkdir()
    parallel = extract(
        model, "simple_cnn", SPEC, paths, batch_size=3, num_workers=2, corruption=NotePid(decoded_by), progress=False
    )
    pids = {int(f.name.split("-")[0]) for f in decoded_by.iterdir()}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes decoded the images
    assert parallel.paths == inline.paths == paths
    assert parallel.ok.tolist() == inline.ok.tolist() == [True] * 4 + [False] + [True] * 3
    assert parallel.errors[4].split(":")[0] == inline.errors[4].split(":")[0] == "UnidentifiedImageError"
    for name in ("photometric", "embedding", "proba"):
        np.testing.assert_array_equal(getattr(parallel, name), getattr(inline, name), err_msg=name)
    for a, b in zip(parallel.layers, inline.layers, strict=True):
        np.testing.assert_array_equal(a, b)


def test_feature_workers_forked_after_opencv_ran_its_threads_do_not_hang(model, images) -> None:
    big = np.random.default_rng(0).integers(0, 256, (1024, 4096), dtype=np.uint8)
    for _ in range(5):  # OpenCV's thread pool runs in this process before the workers are forked (as in a flow)
        cv2.GaussianBlur(big, (15, 15), 3)
    with alarm(60):
        raw = extract(model, "simple_cnn", SPEC, images[0]["path"].tolist()[:4], num_workers=1, progress=False)
    assert raw.ok.all()


def test_feature_workers_follow_the_device_unless_set() -> None:
    assert feature_workers(3, "cpu") == 3 and feature_workers(0, "cuda") == 0
    assert feature_workers(None, "cpu", cpus=2) == 1 and feature_workers(None, "cpu", cpus=1) == 0
    assert feature_workers(None, "cuda") >= 1


def test_projection_whitens_the_training_embeddings() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40)) + 5
    proj = Projection.fit(x, k=16)
    z = proj.transform(x)
    assert z.shape == (300, 16)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1, atol=1e-3)
    assert Projection.fit(x[:5], k=16).k == 4  # never more components than the data supports


def test_novelty_threshold_is_the_quantile_of_familiar_scores_and_flags_strangers_in_any_layer() -> None:
    rng = np.random.default_rng(0)
    centres = [rng.normal(size=(3, 24)) * 3 + 5, rng.normal(size=(3, 40)) * 3 + 5]  # two layers, three classes

    def familiar(n: int) -> tuple[list[np.ndarray], np.ndarray]:
        y = rng.integers(0, 3, n)
        return [c[y] + rng.normal(size=(n, c.shape[1])) for c in centres], y

    train, labels = familiar(600)
    nov = Novelty.fit(train, labels)
    val, _ = familiar(400)
    threshold = nov.calibrate(val, 0.99)
    assert np.mean(nov.score(val) > threshold) == pytest.approx(0.01, abs=0.006)
    test, _ = familiar(400)
    assert nov.is_novel(nov.score(test)).mean() < 0.03
    # a stranger that the first layer sees as a familiar class, the second as nothing it knows
    stranger, _ = familiar(100)
    stranger[1] = rng.normal(size=(100, 40)) * 3 + 5 + rng.normal(size=40) * 4
    assert nov.is_novel(nov.score(stranger)).mean() > 0.9
    with pytest.raises(ValueError, match="labels"):
        Novelty.fit(train, labels[:10])


def test_reference_round_trip_without_pickle(model, images, tmp_path: Path) -> None:
    train, val = images
    ref = build_reference(model, "simple_cnn", SPEC, LABELS, 0.4, train, val, quantile=0.9, progress=False)
    assert set(ref.frame["split"]) == {"train", "val"} and len(ref.rows("train")) == len(train)
    assert {"predicted", "confidence", "margin", "critical_proba", "novelty", "emb_00"} <= set(ref.frame.columns)
    assert ref.novelty.threshold is not None and ref.meta["n_val"] == len(val)
    files = ref.save(tmp_path / "ref")
    assert sorted(p.name for p in files) == ["arrays.npz", "features.csv", "reference.json"]
    with zipfile.ZipFile(tmp_path / "ref" / "arrays.npz") as npz:
        for name in npz.namelist():  # plain arrays: no object (pickled) array inside
            with npz.open(name) as fh:
                header = fh.read(128)
            assert b"'descr': '|O'" not in header, name
    back = Reference.load(tmp_path / "ref")
    np.testing.assert_allclose(back.projection.components, ref.projection.components)
    assert back.novelty.threshold == pytest.approx(ref.novelty.threshold)
    pd.testing.assert_frame_equal(back.frame, ref.frame, check_dtype=False, atol=1e-6)


def test_loading_a_reference_refuses_missing_or_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing arrays\.npz"):
        (tmp_path / "reference.json").write_text("{}")
        (tmp_path / "features.csv").write_text("a\n1\n")
        Reference.load(tmp_path)
    np.savez(tmp_path / "arrays.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="format None"):
        Reference.load(tmp_path)
    Image.new("L", (2, 2)).save(tmp_path / "x.png")  # unrelated files do not matter
