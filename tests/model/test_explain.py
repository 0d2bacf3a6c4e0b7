"""Grad-CAM maps on tiny CNNs, CAM energy inside masks, masks from RLE rows, and the gallery figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from steelqc.tasks.data.rle import rle_encode
from steelqc.tasks.evaluation.explain import cam_in_mask, gradcam_gallery, gradcam_maps, image_mask, mean_cam_in_mask


def _tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_gradcam_maps_shape_range_and_mode_restored():
    model = _tiny_cnn().train()
    inputs = torch.rand(5, 1, 16, 40)
    with torch.no_grad():  # a caller's no_grad must not break Grad-CAM
        maps = gradcam_maps(model, model[3], inputs, [0, 1, 2, 0, 1], batch_size=2)
    assert maps.shape == (5, 16, 40) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert model.training  # mode restored
    assert not model[3]._forward_hooks  # hooks released
    assert gradcam_maps(model, model[3], inputs[:0], []).shape == (0, 16, 40)
    with pytest.raises(ValueError):
        gradcam_maps(model, model[3], inputs, [0])


def test_gradcam_points_at_the_evidence():
    # Feature = relu(x), class 0 score = mean feature: Grad-CAM for class 0 is the (normalised) image itself.
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[4].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[4].bias.zero_()
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen model still gets CAMs
    image = torch.zeros(1, 1, 16, 100)
    image[0, 0, 4:10, 60:80] = 1.0
    cam = gradcam_maps(model, model[1], image, [0])[0]
    mask = np.zeros((16, 100), np.uint8)
    mask[4:10, 60:80] = 1
    assert cam.max() == pytest.approx(1.0, abs=1e-5)
    assert cam_in_mask(cam, mask) == pytest.approx(1.0)


def test_cam_in_mask_inside_outside_and_resized():
    cam = np.zeros((8, 50), np.float32)  # a low-resolution CAM: 32x smaller than 256x1600
    cam[2:4, 10:20] = 1.0
    inside = np.zeros((256, 1600), np.uint8)
    inside[32:160, 256:704] = 1  # covers the hot cells plus the bilinear spill
    outside = np.zeros((256, 1600), np.uint8)
    outside[160:, 1000:] = 1
    assert cam_in_mask(cam, inside) == pytest.approx(1.0, abs=1e-6)
    assert cam_in_mask(cam, outside) == pytest.approx(0.0, abs=1e-6)
    tight = np.zeros((256, 1600), np.uint8)
    tight[64:128, 320:640] = 1  # exactly the hot cells: most, but not all, of the spread energy
    assert 0.5 < cam_in_mask(cam, tight) < 1.0
    assert cam_in_mask(np.zeros((8, 50)), inside) is None
    assert cam_in_mask(cam, None) is None


def test_mean_cam_in_mask_skips_what_cannot_be_measured():
    cam = np.ones((4, 4), np.float32)
    half = np.zeros((4, 4), np.uint8)
    half[:2] = 1
    full = np.ones((4, 4), np.uint8)
    assert mean_cam_in_mask([(cam, half), (cam, full), (cam, None), (np.zeros((4, 4)), full)]) == pytest.approx(0.75)
    assert mean_cam_in_mask([]) is None
    assert mean_cam_in_mask([(cam, None)]) is None


def test_image_mask_is_the_union_of_the_class_rows():
    shape = (16, 100)
    a, b, other = (np.zeros(shape, np.uint8) for _ in range(3))
    a[1:3, 5:9] = 1
    b[10:12, 50:60] = 1
    other[5:8, 20:30] = 1
    masks = pd.DataFrame(
        {
            "image_id": ["x.jpg", "x.jpg", "x.jpg", "y.jpg"],
            "class_id": [3, 3, 1, 3],
            "encoded_pixels": [rle_encode(a), rle_encode(b), rle_encode(other), rle_encode(other)],
        }
    )
    assert np.array_equal(image_mask(masks, "x.jpg", 3, shape), a | b)
    assert np.array_equal(image_mask(masks, "x.jpg", 1, shape), other)
    assert image_mask(masks, "x.jpg", 4, shape) is None
    assert image_mask(masks, "z.jpg", 3, shape) is None
    assert image_mask(masks.iloc[:0], "x.jpg", 3, shape) is None


def test_gradcam_gallery_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 400), dtype=np.uint8) for _ in range(3)]
    cams = [rng.random((7, 7)).astype(np.float32) for _ in range(3)]
    mask = np.zeros((256, 1600), np.uint8)
    mask[50:100, 200:400] = 1
    path = gradcam_gallery(images, cams, ["a", "b", "c"], tmp_path / "gradcam.png", masks=[mask, None, None])
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert gradcam_gallery([], [], [], tmp_path / "empty.png").stat().st_size > 0
