"""Colour stays colour (issue 11, item 4) below the pipeline: the input spec's ``image_channels``, RGB model tensors,
augmentation and glare corruptions on HxWx3, the feature pass (grey photometrics, RGB model input) and the bundle.

The rule every test leans on: a grey image read as RGB (three equal channels) must give exactly what its grey
decode gives, so colour support changes nothing for grey data; a colour difference must reach the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from steelqc.model_registry.packaging import SteelDefectModel, UnsafeModel, make_bundle
from steelqc.tasks.data.datasets import (
    InputSpec,
    ManifestDataset,
    SpecularBand,
    build_transforms,
    seed_transforms,
    to_model_tensor,
)
from steelqc.tasks.data.imageio import decode_image
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.robustness import bright, dim
from steelqc.tasks.features import FeatureDataset, photometric_features
from steelqc.tasks.model.inference import CHECKPOINT_FORMAT
from steelqc.tasks.model.models import build_model
from tests.colour_data import CRITICAL, TINTS, make_colour_pairs, texture, tinted

SPACE = LabelSpace({1: "green_scale", 2: "red_oxide"}, CRITICAL)
RGB_SPEC = InputSpec(32, 96, image_channels=3)
GREY_SPEC = InputSpec(32, 96)


def grey_as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


@pytest.fixture
def pairs(tmp_path: Path) -> dict[str, list[Path]]:
    return make_colour_pairs(tmp_path / "pairs", 4, seed=1)


# ------------------------------------------------------------------------------------------------ input spec


def test_input_spec_image_channels_defaults_to_grey_and_round_trips() -> None:
    assert InputSpec().image_channels == 1
    old = {"height": 32, "width": 96, "channels": 3, "normalize": "per_image"}  # written before the field
    assert InputSpec.from_dict(old).image_channels == 1
    assert InputSpec.from_dict(RGB_SPEC.to_dict()) == RGB_SPEC and RGB_SPEC.to_dict()["image_channels"] == 3
    with pytest.raises(ValueError, match="image_channels must be 1"):
        InputSpec(image_channels=2)
    with pytest.raises(ValueError, match="3-channel model input"):
        InputSpec(channels=1, image_channels=3)


# ------------------------------------------------------------------------------------------------ model tensors


@pytest.mark.parametrize("normalize", ["per_image", "imagenet"])
def test_grey_read_as_rgb_gives_the_grey_tensor(normalize: str) -> None:
    grey = texture(np.random.default_rng(0), (32, 96))
    spec = InputSpec(32, 96, normalize=normalize)
    torch.testing.assert_close(to_model_tensor(grey_as_rgb(grey), spec), to_model_tensor(grey, spec))


def test_rgb_tensor_keeps_the_channels_and_standardises_jointly() -> None:
    grey = texture(np.random.default_rng(0), (32, 96))
    red, green = (tinted(grey, TINTS[name]) for name in ("red_oxide", "green_scale"))
    a, b = to_model_tensor(red, RGB_SPEC), to_model_tensor(green, RGB_SPEC)
    assert a.shape == (3, 32, 96) and a.dtype == torch.float32
    assert abs(float(a.mean())) < 1e-4 and abs(float(a.std(unbiased=False)) - 1) < 1e-3  # one mean/std for all
    assert float(a[0].mean()) > float(a[1].mean()) + 1.0  # red image: red channel above green
    assert float(b[1].mean()) > float(b[0].mean()) + 1.0  # per-channel standardisation would erase both casts
    difference = (red[..., 0].astype(np.float32) - red[..., 2]) / np.float32(red.std())  # (R - B) / joint std
    torch.testing.assert_close(a[0] - a[2], torch.from_numpy(difference), atol=1e-4, rtol=1e-4)


def test_rgb_tensor_with_imagenet_normalisation_uses_the_three_means() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    out = to_model_tensor(rgb, InputSpec(8, 8, normalize="imagenet", image_channels=3))
    assert out[:, 0, 0].tolist() == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rel=1e-5)


def test_rgb_image_needs_a_three_channel_model() -> None:
    with pytest.raises(ValueError, match="3-channel model input"):
        to_model_tensor(np.zeros((8, 8, 3), np.uint8), InputSpec(8, 8, channels=1))


def test_eval_transform_of_grey_read_as_rgb_is_the_grey_transform() -> None:
    grey = texture(np.random.default_rng(2), (48, 144))
    a = build_transforms(RGB_SPEC, train=False)(image=grey_as_rgb(grey))["image"]
    b = build_transforms(GREY_SPEC, train=False)(image=grey)["image"]
    torch.testing.assert_close(a, b)


def test_train_augmentation_runs_on_rgb_invents_no_colour_and_keeps_a_cast() -> None:
    """Every augmentation runs on HxWx3. A grey image read as RGB stays grey through it (within the level CLAHE's
    LAB round trip may move one channel: albumentations equalises L* of an RGB image, not the grey level); a
    colour cast survives it."""
    grey = texture(np.random.default_rng(2), (48, 144))
    colour = tinted(grey, TINTS["red_oxide"])
    transform = build_transforms(RGB_SPEC, train=True)
    for seed in range(8):
        seed_transforms(transform, seed)
        out = transform(image=grey_as_rgb(grey))["image"]
        assert out.shape == (3, 32, 96) and out.dtype == torch.float32
        assert float((out - out[:1]).abs().max()) < 0.1  # one grey level is ~0.03 after standardisation
        seed_transforms(transform, seed)
        cast = transform(image=colour)["image"]
        assert float(cast[0].mean()) > float(cast[1].mean()) + 0.5


def test_specular_band_adds_the_same_light_to_every_channel() -> None:
    grey = texture(np.random.default_rng(3), (32, 96))
    colour = tinted(grey, TINTS["green_scale"])
    band = SpecularBand(p=1.0)
    params = {"vertical": True, "center": 40.0, "sigma": 8.0, "gain": 90.0}
    out = band.apply(colour, **params)
    assert out.shape == colour.shape
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], band.apply(colour[..., c], **params))


# ------------------------------------------------------------------------------------------------ glare


def test_glare_corruptions_apply_per_channel_with_the_grey_formula() -> None:
    grey = texture(np.random.default_rng(4), (40, 120))
    colour = tinted(grey, TINTS["red_oxide"])
    for c in range(3):
        np.testing.assert_array_equal(dim(colour)[..., c], dim(colour[..., c]))
        np.testing.assert_array_equal(bright(colour, "x.png")[..., c], bright(colour[..., c], "x.png"))
    np.testing.assert_array_equal(bright(grey_as_rgb(grey), "x.png"), grey_as_rgb(bright(grey, "x.png")))


# ------------------------------------------------------------------------------------------------ datasets


def test_manifest_dataset_decodes_with_the_specs_image_channels(pairs: dict[str, list[Path]]) -> None:
    frame = pd.DataFrame({"path": [str(p) for p in (pairs["red_oxide"][0], pairs["green_scale"][0])]})
    (red_rgb, _), (green_rgb, _) = ManifestDataset(frame, SPACE, RGB_SPEC, train=False)
    (red_grey, _), (green_grey, _) = ManifestDataset(frame, SPACE, GREY_SPEC, train=False)
    assert float((red_rgb - green_rgb).abs().max()) > 1.0  # colour: the model sees two different images
    assert torch.equal(red_grey, green_grey)  # grey: one and the same input, no model can separate them


def test_feature_pass_feeds_rgb_and_measures_photometrics_on_grey(pairs: dict[str, list[Path]]) -> None:
    paths = [pairs["red_oxide"][1], pairs["green_scale"][1]]
    (red_t, red_f, err1), (green_t, green_f, err2) = FeatureDataset(paths, RGB_SPEC)
    assert not err1 and not err2
    assert float((red_t - green_t).abs().max()) > 1.0
    expected = photometric_features(decode_image(paths[0], channels=1))
    np.testing.assert_array_equal(red_f, expected)
    np.testing.assert_array_equal(green_f, expected)  # same luminance: same photometric features
    (grey_t, grey_f, _), _ = FeatureDataset(paths, GREY_SPEC)
    np.testing.assert_array_equal(grey_f, expected)
    assert grey_t.shape == red_t.shape == (3, 32, 96)


# ------------------------------------------------------------------------------------------------ bundle


def write_checkpoint(path: Path, spec: dict) -> Path:
    model, _ = build_model("simple_cnn", 2, weights="none")
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_name": "simple_cnn",
        "num_classes": 2,
        "label_space": SPACE.to_dict(),
        "input_spec": spec,
        "model_state": model.state_dict(),
    }
    torch.save(state, path)
    return path


def write_bundle(path: Path, spec: dict) -> Path:
    bundle = {"bundle_version": 1, "architecture": "simple_cnn", "label_space": SPACE.to_dict()}
    path.write_text(json.dumps({**bundle, "input_spec": spec, "threshold": None}))
    return path


def test_bundle_records_image_channels_and_the_model_decodes_with_it(tmp_path: Path) -> None:
    bundle = make_bundle("simple_cnn", SPACE, {"height": 32, "width": 96}, None)
    assert bundle["input_spec"]["image_channels"] == 1  # written out even for grey data
    assert make_bundle("simple_cnn", SPACE, RGB_SPEC.to_dict(), None)["input_spec"]["image_channels"] == 3
    ckpt = write_checkpoint(tmp_path / "rgb.pt", RGB_SPEC.to_dict())
    model = SteelDefectModel().load(ckpt, write_bundle(tmp_path / "rgb.json", RGB_SPEC.to_dict()), "cpu")
    assert model.spec.image_channels == 3


def test_old_bundle_and_checkpoint_without_the_field_load_as_grey(tmp_path: Path) -> None:
    old = {"height": 32, "width": 96, "channels": 3, "normalize": "per_image"}
    ckpt = write_checkpoint(tmp_path / "old.pt", old)
    model = SteelDefectModel().load(ckpt, write_bundle(tmp_path / "old.json", old), "cpu")
    assert model.spec.image_channels == 1


def test_bundle_that_disagrees_with_its_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "rgb.pt", RGB_SPEC.to_dict())
    with pytest.raises(UnsafeModel, match=r"image_channels 1 but rgb\.pt was trained with 3"):
        SteelDefectModel().load(ckpt, write_bundle(tmp_path / "grey.json", GREY_SPEC.to_dict()), "cpu")


def test_rgb_png_round_trip_of_the_test_data(pairs: dict[str, list[Path]]) -> None:
    """The generated pairs really are colour in RGB and one grey image in grey (what the pipeline tests rely on)."""
    for red, green in zip(pairs["red_oxide"], pairs["green_scale"], strict=True):
        np.testing.assert_array_equal(decode_image(red, channels=1), decode_image(green, channels=1))
        rgb = decode_image(red, channels=3).astype(int) - decode_image(green, channels=3).astype(int)
        assert set(np.unique(rgb[..., 0])) == {80} and set(np.unique(rgb[..., 1])) == {-40}
        with Image.open(red) as image:
            assert image.mode == "RGB"
