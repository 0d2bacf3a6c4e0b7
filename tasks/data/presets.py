"""Training augmentation presets: the photometric steps that make a model steady under a plant's unstable lighting.

A preset is named and recorded in the training settings (``TrainConfig.augment``), so a run's augmentation can be
rebuilt exactly from its checkpoint. :func:`photometric_steps` returns a preset's albumentations steps; the
geometric steps, resizing and normalisation stay in :func:`steelqc.tasks.data.datasets.build_transforms`.

* ``glare-v1`` (the first recipe, kept so old runs can be reproduced): CLAHE, brightness -0.35..+0.4 with
  clipping, contrast ±0.2, gamma 0.8..1.2 and an axis-aligned additive band (built in ``datasets``).
* ``light-v2`` (default): the light a camera over a moving strip actually sees, each effect drawn independently:

  - a global exposure change: brightness -0.4..+0.4 of full scale with clipping (crushed shadows, saturated
    background) and contrast ±0.3;
  - a non-linear response (gamma 0.7..1.4) and local contrast (CLAHE);
  - a specular highlight: a straight band at any angle (reflections follow the rolls and the lamp, not the image
    axes), of a random width, either added with clipping (hard glare) or screen-blended (light compressing the
    grey levels toward white without erasing them);
  - a smooth illumination gradient across the strip (a lamp at one side).

  None of these is the glare test's corruption: evaluation (``tasks.evaluation.robustness``) is never imported
  here, its parameters are not copied, and the test still measures lighting the model was not shown exactly.

Every transform works on uint8 H x W (grey) and H x W x C (colour) images and draws its parameters from the
Compose's shared generators (see ``datasets.seed_transforms``), so augmentation is reproducible from the seed.
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import numpy as np

AUGMENT_PRESETS = ("glare-v1", "light-v2")
DEFAULT_AUGMENT = "light-v2"
_LEVELS = 255.0


def _broadcast(profile: np.ndarray, img: np.ndarray) -> np.ndarray:
    """An H x W profile shaped to broadcast over an H x W or H x W x C image."""
    return profile[:, :, None] if img.ndim == 3 else profile


class LightBand(A.ImageOnlyTransform):
    """A straight specular band at a random angle: Gaussian across its axis, added (clipped) or screen-blended.

    ``amplitude``: peak brightness as a share of full scale; ``width``: the band's FWHM as a share of the image's
    longer side; ``angle``: degrees from the image's long axis' normal, drawn uniformly; ``screen_p``: chance of a
    screen blend (``1 - (1 - x)(1 - a·band)``) instead of an added, clipped band.
    """

    def __init__(
        self,
        *,
        amplitude: tuple[float, float] = (0.2, 0.6),
        width: tuple[float, float] = (0.03, 0.25),
        angle: tuple[float, float] = (-90.0, 90.0),
        screen_p: float = 0.5,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.amplitude, self.width, self.angle, self.screen_p = amplitude, width, angle, screen_p

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        rnd = self.py_random
        return {
            "center": (rnd.uniform(0, width), rnd.uniform(0, height)),
            "theta": math.radians(rnd.uniform(*self.angle)),
            "sigma": max(1.0, rnd.uniform(*self.width) * max(height, width) / 2.3548),
            "gain": rnd.uniform(*self.amplitude),
            "screen": rnd.random() < self.screen_p,
        }

    def apply(
        self,
        img: np.ndarray,
        center: tuple[float, float],
        theta: float,
        sigma: float,
        gain: float,
        screen: bool,
        **params: Any,
    ) -> np.ndarray:
        height, width = img.shape[:2]
        xs = np.arange(width, dtype=np.float32) - np.float32(center[0])
        ys = np.arange(height, dtype=np.float32) - np.float32(center[1])
        distance = xs[None, :] * np.float32(math.cos(theta)) + ys[:, None] * np.float32(math.sin(theta))
        band = _broadcast(np.exp(-0.5 * (distance / np.float32(sigma)) ** 2), img)
        x = img.astype(np.float32)
        if screen:
            out = _LEVELS - (_LEVELS - x) * (1.0 - np.float32(gain) * band)
        else:
            out = x + np.float32(gain * _LEVELS) * band
        return np.clip(out + 0.5, 0, _LEVELS).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("amplitude", "width", "angle", "screen_p")


class IlluminationGradient(A.ImageOnlyTransform):
    """A linear illumination ramp across the image at a random angle: gain ``1 ± strength`` from side to side."""

    def __init__(self, *, strength: tuple[float, float] = (0.1, 0.4), p: float = 0.3):
        super().__init__(p=p)
        self.strength = strength

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"theta": self.py_random.uniform(0, 2 * math.pi), "strength": self.py_random.uniform(*self.strength)}

    def apply(self, img: np.ndarray, theta: float, strength: float, **params: Any) -> np.ndarray:
        height, width = img.shape[:2]
        xs = np.linspace(-1, 1, width, dtype=np.float32)
        ys = np.linspace(-1, 1, height, dtype=np.float32)
        ramp = xs[None, :] * np.float32(math.cos(theta)) + ys[:, None] * np.float32(math.sin(theta))
        ramp /= max(float(np.abs(ramp).max()), 1e-6)
        gain = _broadcast(1.0 + np.float32(strength) * ramp, img)
        return np.clip(img.astype(np.float32) * gain + 0.5, 0, _LEVELS).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("strength",)


def light_v2() -> list[A.BasicTransform]:
    """The ``light-v2`` photometric steps (see the module doc)."""
    return [
        A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=0.3),
        A.RandomBrightnessContrast(brightness_limit=(-0.4, 0.4), contrast_limit=(-0.3, 0.3), p=0.9),
        A.RandomGamma(gamma_limit=(70, 140), p=0.4),
        IlluminationGradient(strength=(0.1, 0.4), p=0.3),
        LightBand(amplitude=(0.2, 0.6), width=(0.03, 0.25), angle=(-90.0, 90.0), screen_p=0.5, p=0.5),
    ]


def check_augment(name: str) -> str:
    """``name`` when it is a known preset, else ValueError listing them."""
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
    return name
