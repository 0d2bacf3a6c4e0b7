"""Glare robustness: exact, seeded photometric corruptions of uint8 images (grey or RGB), and the glare summary.

**Evaluation only: training must never import this module.** The glare test measures how a model trained on
clean images copes with lighting it has not seen; augmenting training with these same corruptions would make
the test measure memorisation of the corruption, not robustness.

Corruptions work on intensity ``x = pixel / 255`` in [0, 1], i.e. on grey levels ``v = x * 255``:

* ``dim``: ``x -> clip(x - 0.3, 0, 1)``, the mirror of ImageNet-C *brightness* severity 3 (which adds +0.3 to
  HSV V; for a grey image V is the intensity).
* ``bright``: ``x' = clip(x + 0.3, 0, 1)``, the ImageNet-C brightness shift, then a specular highlight band
  applied as a screen blend, ``1 - (1 - x') * (1 - 0.4 * band(x, y))``: reflected light compresses the grey
  levels toward white without clipping them. (A hard-clipped +0.4 on top of +0.3 saturates every pixel brighter
  than 0.3 under the band, while dim erases every pixel darker than 0.3: no strip survives both, so the test would
  measure the corruption's destruction rather than the model's robustness.)
  ``band`` is a Gaussian profile across a straight band (peak 1 on its axis); the axis passes
  through ``(cx * W, H / 2)`` at an angle from vertical drawn in [-45°, 45°] (near-vertical to diagonal); its
  width (full width at half maximum) is a share of the image width drawn in [5 %, 15 %]. The three draws
  ``(cx, angle, width share)`` come from ``numpy.random.default_rng`` seeded with ``(seed, sha256(image_id))``,
  so an image always gets the same band, whatever the process or the image size.

Colour data (HxWx3 RGB): the same formula on every channel, with the same band on all three (glare is white
light), so a grey image read as RGB (three equal channels) is corrupted exactly as its grey decode is.

Rounding (exact, documented): the shift 0.3 is ``0.3 * 255 = 76.5`` grey levels, applied in float; the result
is clipped to [0, 255] and rounded half up (``floor(v + 0.5)``). Hence ``dim(p) = max(p - 76, 0)`` and, away
from the band, ``bright(p) = min(p + 77, 255)`` for every uint8 ``p`` (e.g. dim 100 -> 23.5 -> 24, bright
100 -> 176.5 -> 177, bright 250 -> 255).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

log = logging.getLogger(__name__)

GLARE_VARIANTS = ("clean", "dim", "bright")
BAND_WIDTH_RANGE = (0.05, 0.15)  # band FWHM as a share of the image width
BAND_ANGLE_RANGE_DEG = (-45.0, 45.0)  # band axis angle from vertical
_LEVELS = 255.0
# ImageNet-C brightness severity 3 (a shift of 0.3 in [0, 1] intensity units) and the extra intensity 0.4 on the
# highlight band's axis, in grey levels (x 255), written out so exactness does not rest on float rounding
_SHIFT_LEVELS = 76.5
_PEAK_LEVELS = 102.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class Band:
    """A highlight band: axis centre as a share of the width, angle from vertical (degrees), FWHM share of width."""

    center: float
    angle_deg: float
    width: float


def band_for(image_id: str, seed: int = 0) -> Band:
    """The band of ``image_id``: drawn from a RNG seeded by ``(seed, sha256(image_id))``, so always the same."""
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    digest = int.from_bytes(hashlib.sha256(str(image_id).encode("utf-8")).digest()[:16], "big")
    rng = np.random.default_rng([int(seed), digest])
    center, angle, width = rng.random(3)
    lo_a, hi_a = BAND_ANGLE_RANGE_DEG
    lo_w, hi_w = BAND_WIDTH_RANGE
    return Band(
        center=float(center), angle_deg=float(lo_a + angle * (hi_a - lo_a)), width=float(lo_w + width * (hi_w - lo_w))
    )


def band_profile(shape: tuple[int, int], band: Band) -> np.ndarray:
    """Gaussian band profile (float32, H x W, peak 1 on the axis) for an image of ``shape``."""
    height, width = int(shape[0]), int(shape[1])
    theta = math.radians(band.angle_deg)
    sigma = band.width * width * _FWHM_TO_SIGMA
    xs = np.arange(width, dtype=np.float32) - np.float32(band.center * width)
    ys = np.arange(height, dtype=np.float32) - np.float32(height / 2)
    # Signed distance from the axis, whose direction is (sin θ, cos θ) in (x, y).
    distance = xs[None, :] * np.float32(math.cos(theta)) - ys[:, None] * np.float32(math.sin(theta))
    return np.exp(-0.5 * (distance / np.float32(sigma)) ** 2).astype(np.float32)


def _check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"glare corruptions take uint8 images, got {img.dtype}")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an H x W (or H x W x C) image, got shape {img.shape}")
    return img


def _to_uint8(levels: np.ndarray) -> np.ndarray:
    """Clip grey levels to [0, 255] and round half up."""
    return np.floor(np.clip(levels, 0.0, _LEVELS) + 0.5).astype(np.uint8)


def dim(img: np.ndarray) -> np.ndarray:
    """``x -> clip(x - 0.3, 0, 1)`` on a uint8 image (exactly ``max(p - 76, 0)``)."""
    img = _check_image(img)
    return _to_uint8(img.astype(np.float32) - np.float32(_SHIFT_LEVELS))


def bright(img: np.ndarray, image_id: str, seed: int = 0) -> np.ndarray:
    """``x -> 1 - (1 - clip(x + 0.3, 0, 1)) * (1 - 0.4 * band)`` with the seeded band of ``image_id``."""
    img = _check_image(img)
    profile = band_profile(img.shape[:2], band_for(image_id, seed))
    if img.ndim == 3:
        profile = profile[:, :, None]
    shifted = np.clip(img.astype(np.float32) + np.float32(_SHIFT_LEVELS), 0.0, _LEVELS)
    # Screen blend: the highlight adds light that compresses toward white (1 - (1 - x)(1 - 0.4 band)); it keeps the
    # order of grey levels, so edges under the band dim in contrast instead of being clipped away.
    levels = _LEVELS - (_LEVELS - shifted) * (1.0 - np.float32(_PEAK_LEVELS / _LEVELS) * profile)
    return _to_uint8(levels)


@dataclass(frozen=True)
class GlareCorruption:
    """A picklable ``(img_uint8, image_id) -> img_uint8`` corruption (HxW grey or HxWxC, every channel alike; safe
    for DataLoader worker processes)."""

    variant: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in ("dim", "bright"):
            raise ValueError(f"unknown glare variant {self.variant!r}; expected 'dim' or 'bright'")

    def __call__(self, img: np.ndarray, image_id: str) -> np.ndarray:
        return dim(img) if self.variant == "dim" else bright(img, image_id, self.seed)


def glare_corruption(variant: str, seed: int = 0) -> Callable[[np.ndarray, str], np.ndarray] | None:
    """The corruption of a glare variant (one of :data:`GLARE_VARIANTS`); ``None`` for ``clean``."""
    if variant not in GLARE_VARIANTS:
        raise ValueError(f"unknown glare variant {variant!r}; expected one of {GLARE_VARIANTS}")
    return None if variant == "clean" else GlareCorruption(variant, int(seed))


def glare_summary(f1_clean: float | None, f1_dim: float | None, f1_bright: float | None) -> dict:
    """The ``glare`` block of the metrics: the three F1s, ``delta_f1`` (largest drop from clean, never negative)
    and ``delta_f1_dim_bright`` (|dim - bright|, see README "The training pipeline"). A missing (None) F1 makes the
    figures that need it None; ``delta_f1`` uses whichever corrupted F1s are known."""

    def num(value: float | None) -> float | None:
        return None if value is None or math.isnan(float(value)) else float(value)

    clean, dimmed, brightened = num(f1_clean), num(f1_dim), num(f1_bright)
    drops = [clean - f1 for f1 in (dimmed, brightened) if f1 is not None] if clean is not None else []
    return {
        "f1_clean": clean,
        "f1_dim": dimmed,
        "f1_bright": brightened,
        "delta_f1": max([*drops, 0.0]) if drops else None,
        "delta_f1_dim_bright": abs(dimmed - brightened) if dimmed is not None and brightened is not None else None,
    }


def glare_examples_figure(image: np.ndarray, image_id: str, path: Path | str, seed: int = 0) -> Path:
    """Save a PNG showing ``image`` clean, dim and bright (wide images stacked, others side by side)."""
    matplotlib.use("Agg", force=False)
    image = _check_image(image)
    variants = {"clean": image, "dim": dim(image), "bright": bright(image, image_id, seed)}
    height, width = image.shape[:2]
    wide = width > 2 * height
    if wide:
        fig, axes = plt.subplots(3, 1, figsize=(10, 3 * (10 * height / width + 0.4)))
    else:
        fig, axes = plt.subplots(1, 3, figsize=(10, 10 / 3 * height / width + 0.6))
    for ax, (name, shown) in zip(axes, variants.items(), strict=True):
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(f"{name} ({image_id})", fontsize=9)
        ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
