"""Glare corruptions: exact pixel arithmetic, seeded per-image bands, the summary and the example figure."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from steelqc.tasks.evaluation.robustness import (
    GLARE_VARIANTS,
    Band,
    band_for,
    band_profile,
    bright,
    dim,
    glare_corruption,
    glare_examples_figure,
    glare_summary,
)

SHAPE = (64, 400)


def test_dim_is_exact_on_every_grey_level():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = dim(levels)
    assert out.dtype == np.uint8
    # 100 - 76.5 = 23.5 -> rounded half up -> 24; everything at or below 76 goes to 0.
    assert dim(np.array([[100, 76, 77, 0, 255]], dtype=np.uint8)).tolist() == [[24, 0, 1, 0, 179]]
    assert np.array_equal(out, np.maximum(levels.astype(int) - 76, 0))


def test_bright_is_exact_away_from_the_band():
    img = np.full(SHAPE, 100, dtype=np.uint8)
    img[0, :] = 250
    img[1, :] = 178
    out = bright(img, "img-1.jpg")
    profile = band_profile(SHAPE, band_for("img-1.jpg"))
    far = profile < 1e-6
    assert far.any() and (~far).any()
    assert (out[2:][far[2:]] == 177).all()  # 100 + 76.5 = 176.5 -> 177
    assert (out[0] == 255).all()  # 250 + 76.5 clips to 255
    assert (out[1][far[1]] == 255).all()  # 178 + 76.5 = 254.5 -> 255
    # On the band axis the highlight screens toward white: 255 - (255 - 176.5) * (1 - 0.4) = 207.9 -> 208.
    peak = profile > 0.999
    assert (out[2:][peak[2:]] == 208).all()
    assert (out >= 177).all()
    # Screening keeps grey levels apart under the band (an edge survives): 150 -> 226.5 -> 255 - 28.5 * 0.6 = 237.9.
    darker = bright(np.full(SHAPE, 100, dtype=np.uint8), "img-1.jpg").astype(int)
    lighter = bright(np.full(SHAPE, 150, dtype=np.uint8), "img-1.jpg").astype(int)
    assert (lighter[peak] == 238).all() and (darker[peak] == 208).all()
    assert (lighter >= darker).all()


def test_band_is_deterministic_per_image_and_differs_between_images():
    a1 = bright(np.zeros(SHAPE, np.uint8), "a.jpg", seed=0)
    a2 = glare_corruption("bright", seed=0)(np.zeros(SHAPE, np.uint8), "a.jpg")
    assert np.array_equal(a1, a2)
    b = bright(np.zeros(SHAPE, np.uint8), "b.jpg", seed=0)
    assert not np.array_equal(a1, b)
    assert not np.array_equal(a1, bright(np.zeros(SHAPE, np.uint8), "a.jpg", seed=1))
    assert band_for("a.jpg") == band_for("a.jpg")
    bands = [band_for(f"img{i}") for i in range(200)]
    assert all(0.05 <= band.width <= 0.15 and -45 <= band.angle_deg <= 45 and 0 <= band.center < 1 for band in bands)
    assert len({band.center for band in bands}) == 200


def test_band_width_is_its_full_width_at_half_maximum():
    profile = band_profile((8, 1000), Band(center=0.5, angle_deg=0.0, width=0.1))
    assert ((profile[4] >= 0.5).sum()) == pytest.approx(100, abs=2)  # 10 % of 1000 columns
    assert profile[:, 500].min() == pytest.approx(1.0)  # vertical band: the axis column is at the peak


def test_glare_corruption_variants():
    assert GLARE_VARIANTS == ("clean", "dim", "bright")
    assert glare_corruption("clean") is None
    img = np.full((4, 4), 200, np.uint8)
    assert (glare_corruption("dim")(img, "x") == 124).all()
    corruption = glare_corruption("bright", seed=3)
    assert np.array_equal(pickle.loads(pickle.dumps(corruption))(img, "x"), corruption(img, "x"))
    with pytest.raises(ValueError):
        glare_corruption("foggy")
    with pytest.raises(TypeError):
        dim(img.astype(np.float32))


def test_glare_summary_arithmetic():
    s = glare_summary(0.9, 0.7, 0.85)
    assert s["f1_clean"] == 0.9 and s["f1_dim"] == 0.7 and s["f1_bright"] == 0.85
    assert s["delta_f1"] == pytest.approx(0.2)  # largest drop from clean
    assert s["delta_f1_dim_bright"] == pytest.approx(0.15)
    s = glare_summary(0.8, 0.85, 0.9)  # corruptions helped: no drop, never negative
    assert s["delta_f1"] == 0.0 and s["delta_f1_dim_bright"] == pytest.approx(0.05)
    s = glare_summary(0.8, 0.6, None)
    assert s["delta_f1"] == pytest.approx(0.2) and s["delta_f1_dim_bright"] is None


def test_glare_examples_figure(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
    path = glare_examples_figure(img, "a.jpg", tmp_path / "glare.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
