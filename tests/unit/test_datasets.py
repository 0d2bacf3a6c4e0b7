"""Datasets, transforms, class balance and loaders on tiny generated images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import WeightedRandomSampler

from steelqc.tasks.data.cache import ImageCache
from steelqc.tasks.data.datasets import (
    InputSpec,
    ManifestDataset,
    build_transforms,
    class_weights,
    default_input_spec,
    default_num_workers,
    make_loader,
    make_sampler,
    read_image,
    seed_transforms,
    set_loader_epoch,
    standardize,
)
from steelqc.tasks.data.labels import LabelSpace
from tests.helpers import shared_path

LABELS = LabelSpace({0: "ok", 1: "crack", 2: "scratch"}, "crack")
SPEC = InputSpec(height=32, width=64)


def textured(seed: int, shape: tuple[int, int] = (48, 96), low: int = 60, high: int = 160) -> np.ndarray:
    """A uint8 grey image with structure (gradient + noise) in [low, high]."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, shape[1])[None, :] * np.linspace(0.5, 1, shape[0])[:, None]
    img = low + (high - low) * (0.6 * ramp + 0.4 * rng.random(shape))
    return img.astype(np.uint8)


def write_frame(root: Path, n: int, labels: list[int] | None = None, suffix: str = ".png") -> pd.DataFrame:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = root / f"img{i}{suffix}"
        Image.fromarray(textured(i)).save(path, format="PNG")
        label = labels[i] if labels is not None else i % 3
        rows.append({"image_id": path.name, "path": str(path), "label": label})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ spec / reading


def test_default_input_spec_sizes() -> None:
    assert default_input_spec(256, 1600, "cpu") == InputSpec(128, 800)
    assert default_input_spec(200, 200, "cpu") == InputSpec(160, 160)
    assert default_input_spec(256, 1600, "cuda") == InputSpec(256, 1600)
    assert default_input_spec(200, 200, "cuda:0") == InputSpec(200, 200)
    spec = default_input_spec(100, 300, "cpu")  # aspect kept, multiples of 32
    assert (spec.height, spec.width) == (64, 160)


def test_input_spec_validates_and_round_trips() -> None:
    with pytest.raises(ValueError, match="normalize"):
        InputSpec(normalize="zscore")
    spec = InputSpec(48, 48, 1, "imagenet")
    assert InputSpec.from_dict(spec.to_dict()) == spec


def test_read_image_decodes_by_content(tmp_path: Path) -> None:
    grey = textured(1)
    path = tmp_path / "really_png.jpg"  # PNG bytes behind a .jpg name, as in the real Severstal sample
    Image.fromarray(grey).save(path, format="PNG")
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == grey.shape
    np.testing.assert_array_equal(out, grey)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(rgb)
    np.testing.assert_array_equal(read_image(rgb), grey)


# ------------------------------------------------------------------------------------------------ transforms


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("channels", "normalize"), [(3, "per_image"), (1, "per_image"), (3, "imagenet")])
def test_transform_output_shape_dtype_channels(train: bool, channels: int, normalize: str) -> None:
    spec = InputSpec(32, 64, channels, normalize)
    out = build_transforms(spec, train)(image=textured(0))["image"]
    assert isinstance(out, torch.Tensor)
    assert out.shape == (channels, 32, 64) and out.dtype == torch.float32
    if channels == 3 and normalize == "per_image":
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_non_square_is_never_rotated_square_may_be() -> None:
    wide = build_transforms(SPEC, train=True)
    seed_transforms(wide, 0)
    assert not any(isinstance(t, A.RandomRotate90) for t in wide.transforms)
    assert {tuple(wide(image=textured(i))["image"].shape) for i in range(60)} == {(3, 32, 64)}
    square = build_transforms(InputSpec(32, 32), train=True)
    assert any(isinstance(t, A.RandomRotate90) for t in square.transforms)


def test_per_image_normalisation_removes_brightness_offset() -> None:
    img = textured(3, low=40, high=150)
    brighter = img + np.uint8(60)  # no clipping: max 210
    per_image = build_transforms(SPEC, train=False)
    a, b = per_image(image=img)["image"], per_image(image=brighter)["image"]
    assert abs(float(a.mean())) < 1e-4 and abs(float(a.std()) - 1) < 1e-2
    assert float((a - b).abs().max()) < 1e-3
    imagenet = build_transforms(InputSpec(32, 64, normalize="imagenet"), train=False)
    c, d = imagenet(image=img)["image"], imagenet(image=brighter)["image"]
    assert float((c - d).abs().mean()) > 0.5  # the test would notice if normalisation stopped removing offsets


def test_standardize_floors_the_std_of_flat_images() -> None:
    flat = np.full((8, 8), 100, np.uint8)
    assert np.all(standardize(flat) == 0)
    noisy = np.full((8, 8), 100, np.uint8)
    noisy[0, 0] = 101  # a single grey level of noise must not be blown up to unit variance
    assert float(np.abs(standardize(noisy)).max()) < 0.5


def test_train_augmentation_is_seeded_and_photometric() -> None:
    t = build_transforms(SPEC, train=True)
    img = textured(5)
    seed_transforms(t, [1, 2])
    first = [t(image=img)["image"] for _ in range(5)]
    seed_transforms(t, [1, 2])
    again = [t(image=img)["image"] for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert any(not torch.equal(first[0], x) for x in first[1:])


def test_seed_transforms_keeps_flip_decisions_independent() -> None:
    t = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    seed_transforms(t, 7)
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    corners = Counter(int(t(image=img)["image"][0, 0]) for _ in range(200))
    assert set(corners) == {0, 3, 8, 11}  # none, h, v, both: all four combinations occur


# ------------------------------------------------------------------------------------------------ dataset


def test_dataset_items_labels_and_corruption_hook(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, 4)
    seen: list[tuple[str, tuple[int, int], np.dtype]] = []

    def corrupt(img: np.ndarray, image_id: str) -> np.ndarray:
        seen.append((image_id, img.shape, img.dtype))
        return np.clip(img.astype(int) + 200, 0, 255).astype(np.uint8)  # saturate: a visible change

    plain = ManifestDataset(frame, LABELS, SPEC, train=False)
    hooked = ManifestDataset(frame, LABELS, SPEC, train=False, corruption=corrupt)
    x, y = plain[1]
    xc, yc = hooked[1]
    assert y == yc == 1 and x.shape == xc.shape == (3, 32, 64)
    assert seen == [("img1.png", (48, 96), np.dtype(np.uint8))]
    expected = build_transforms(SPEC, train=False)(image=corrupt(read_image(frame.path[1]), "img1.png"))["image"]
    assert torch.equal(xc, expected) and not torch.allclose(x, xc, atol=0.1)


def test_dataset_maps_class_ids_to_indices_and_allows_no_label(tmp_path: Path) -> None:
    folders = LabelSpace({1: "crazing", 2: "inclusion", 5: "scratches"}, "crazing")
    frame = write_frame(tmp_path, 3)
    frame["label"] = [5, 1, 2]
    assert ManifestDataset(frame, folders, SPEC, train=False).labels == [2, 0, 1]
    unlabelled = ManifestDataset(frame.drop(columns=["label"]), folders, SPEC, train=False)
    assert unlabelled[0][1] == -1


def test_cache_gives_the_same_tensors(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, 5)
    plain = ManifestDataset(frame, LABELS, SPEC, train=False)
    cached = ManifestDataset(frame, LABELS, SPEC, train=False, cache=True)
    Path(frame.path[0]).unlink()  # the cache must really hold the image
    for i in range(5):
        if i:
            assert torch.allclose(plain[i][0], cached[i][0], atol=1e-5)
    assert cached[0][0].shape == (3, 32, 64)


def test_disk_cache_serves_the_next_run_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = write_frame(tmp_path / "imgs", 4)
    first_cache = ImageCache(tmp_path / "cache", 0, 10**7)  # disk only
    first = ManifestDataset(frame, LABELS, SPEC, train=False, cache=first_cache)
    assert first_cache.stats()["misses"] == 4
    expected = [first[i][0] for i in range(4)]

    def no_decoding(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decoded although the disk cache holds the image")

    monkeypatch.setattr("steelqc.tasks.data.datasets.read_image", no_decoding)
    next_cache = ImageCache(tmp_path / "cache", 10**7, 10**7)  # the next night's run: a new process
    again = ManifestDataset(frame, LABELS, SPEC, train=False, cache=next_cache)
    assert all(torch.equal(again[i][0], expected[i]) for i in range(4))
    assert next_cache.stats()["hits_disk"] == 4 and next_cache.stats()["misses"] == 0
    other_size = InputSpec(height=16, width=32)
    with pytest.raises(AssertionError, match="decoded although"):
        ManifestDataset(frame, LABELS, other_size, train=False, cache=next_cache)  # another size: another key


def test_memory_cache_is_bounded(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, 6)
    one_image = SPEC.height * SPEC.width
    cache = ImageCache(None, 2 * one_image, 0)
    ManifestDataset(frame, LABELS, SPEC, train=False, cache=cache)
    stats = cache.stats()
    assert stats["entries_memory"] == 2 and stats["bytes_memory"] <= 2 * one_image and stats["evictions_memory"] == 4


# ------------------------------------------------------------------------------------------------ balance / loaders


def test_class_weights_inverse_frequency_mean_one_absent_zero() -> None:
    w = class_weights([0] * 90 + [1] * 10, 3)
    np.testing.assert_allclose(w.numpy(), [0.2, 1.8, 0.0], rtol=1e-6)
    assert float(w[:2].mean()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        class_weights([0, 3], 3)


def test_sampler_balances_a_90_10_imbalance() -> None:
    labels = [0] * 900 + [1] * 100
    sampler = make_sampler(labels, 2, seed=3)
    assert isinstance(sampler, WeightedRandomSampler) and len(sampler) == 1000
    drawn = list(sampler)
    share = sum(labels[i] for i in drawn) / len(drawn)
    assert 0.45 < share < 0.55
    assert drawn == list(make_sampler(labels, 2, seed=3))
    assert drawn != list(make_sampler(labels, 2, seed=4))


def test_make_loader_modes(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, 40, labels=[0] * 36 + [1] * 4)
    ds = ManifestDataset(frame, LABELS, SPEC, train=True, cache=True)
    balanced = make_loader(ds, 8, train=True, balanced=True, num_workers=0, device="cpu", seed=0)
    assert isinstance(balanced.sampler, WeightedRandomSampler) and not balanced.pin_memory
    order = list(balanced.sampler)
    set_loader_epoch(balanced, 0, 1)
    epoch1 = list(balanced.sampler)
    set_loader_epoch(balanced, 0, 1)
    assert list(balanced.sampler) == epoch1 != order
    counts = Counter()
    for epoch in range(5):
        set_loader_epoch(balanced, 0, epoch)
        counts.update(balanced.sampler.weights[i].item() > 0.1 for i in balanced.sampler)  # True: class 1
    assert 0.35 < counts[True] / sum(counts.values()) < 0.65
    shuffled = make_loader(ds, 8, train=True, balanced=False, num_workers=0, device="cpu", seed=0)
    assert sorted(shuffled.sampler) == list(range(40)) and list(shuffled.sampler) != list(range(40))
    ordered = make_loader(ds, 8, train=False, balanced=True, num_workers=0, device="cuda", seed=0)
    assert list(ordered.sampler) == list(range(40)) and ordered.pin_memory
    batch, labels = next(iter(make_loader(ds, 8, False, False, 0, "cpu", 0)))
    assert batch.shape == (8, 3, 32, 64) and labels.tolist() == ds.labels[:8]


def test_loader_workers_get_distinct_augmentation(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, 1)
    frame = pd.concat([frame] * 8, ignore_index=True)  # the same image 8 times
    ds = ManifestDataset(frame, LABELS, SPEC, train=True)
    loader = make_loader(ds, 1, train=False, balanced=False, num_workers=2, device="cpu", seed=0)
    assert loader.persistent_workers
    outs = [x[0] for x, _ in loader]
    distinct = {tuple(o.flatten()[:64].tolist()) for o in outs}
    assert len(distinct) >= 6  # workers forked with one RNG state would repeat each other's draws


@pytest.mark.shared_data
def test_real_severstal_images_png_behind_jpg_names() -> None:
    images = shared_path("severstal-sample", "train_images")
    files = sorted(images.glob("*.jpg"))
    kinds = {Image.open(f).format for f in files}
    assert kinds == {"PNG", "JPEG"}  # the sample mixes both behind .jpg names
    picked = [next(f for f in files if Image.open(f).format == kind) for kind in ("PNG", "JPEG")]
    frame = pd.DataFrame({"image_id": [f.name for f in picked], "path": [str(f) for f in picked], "label": [0, 1]})
    for f in picked:
        img = read_image(f)
        assert img.shape == (256, 1600) and img.dtype == np.uint8 and img.std() > 1
    ds = ManifestDataset(frame, LABELS, default_input_spec(256, 1600, "cpu"), train=True)
    for i in range(2):
        x, _ = ds[i]
        assert x.shape == (3, 128, 800) and torch.isfinite(x).all()


def test_default_num_workers() -> None:
    assert default_num_workers("cpu") == 0
    assert 1 <= default_num_workers("cuda") <= 8
