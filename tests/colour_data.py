"""A tiny colour data set whose classes differ only in colour (issue 11, item 4): grey cannot tell them apart.

Image ``i`` of both classes shares one grey texture ``v`` (smoothed noise, levels 50..200). ``red_oxide`` is
``(v + 40, v - 20, v)`` and ``green_scale`` ``(v - 40, v + 20, v)``: tints of equal luminance. Pillow's grey is
``(19595 R + 38470 G + 7471 B + 32768) >> 16`` and the weights sum to 65536, so a tint ``(a, b, c)`` moves the grey
level by ``floor((19595 a + 38470 b + 7471 c + 32768) / 65536)``: 0 for both tints (``±14400``), hence both images of
pair ``i`` decode to exactly ``v`` in grey. Saved as PNG (lossless), so the grey identity holds byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

TINTS: dict[str, tuple[int, int, int]] = {"green_scale": (-40, 20, 0), "red_oxide": (40, -20, 0)}
CRITICAL = "red_oxide"
IMAGE_SHAPE = (64, 192)


def texture(rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """A steel-like grey texture (uint8, levels 50..200, so every tint stays in range)."""
    noise = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), 2.0)
    return np.clip(np.rint(125 + 35 * noise / noise.std()), 50, 200).astype(np.uint8)


def tinted(grey: np.ndarray, tint: tuple[int, int, int]) -> np.ndarray:
    """``grey`` as RGB with ``tint`` added to each channel (no clipping: the texture leaves room)."""
    return np.stack([grey.astype(np.int16) + t for t in tint], axis=2).astype(np.uint8)


def make_colour_pairs(root: Path, n_pairs: int, seed: int = 0, prefix: str = "") -> dict[str, list[Path]]:
    """``root/<class>/<prefix><class>_<i>.png`` for both classes of :data:`TINTS`, pair ``i`` sharing a texture."""
    rng = np.random.default_rng(seed)
    paths: dict[str, list[Path]] = {name: [] for name in TINTS}
    for name in TINTS:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n_pairs):
        grey = texture(rng)
        for name, tint in TINTS.items():
            path = root / name / f"{prefix}{name}_{i:03d}.png"
            Image.fromarray(tinted(grey, tint), "RGB").save(path)
            paths[name].append(path)
    return paths
