"""Deterministic synthetic steel-strip images in Severstal's format, for demos and tests.

:func:`generate_dataset` writes ``OUT/train.csv`` (Kaggle's new format: ``ImageId,ClassId,EncodedPixels``, one
row per defect mask, none for defect-free images) and ``OUT/train_images/<ImageId>`` grey JPEGs. Image ``i`` is
drawn from ``np.random.default_rng([seed, i])`` alone, so the output does not depend on generation order and the
same seed gives byte-identical files (same platform, numpy and Pillow versions).

Every defect is drawn as a relative intensity change ``delta`` (the image is multiplied by ``1 + delta``), so
defects stay visible when the whole frame is dimmed or brightened. Changes smaller than ``_EPS`` are dropped, so
a defect's mask is exactly the set of pixels it changed.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from steelqc.tasks.config import DEFAULT_CLASS_NAMES, SEVERSTAL_SHAPE, label_priority_ids
from steelqc.tasks.data.rle import rle_encode

log = logging.getLogger(__name__)

DEFAULT_MIX: dict[int, float] = {0: 0.47, 1: 0.09, 2: 0.04, 3: 0.32, 4: 0.08}
"""Share of images by single label, shaped like Severstal: about half OK, dents common, scratches rare."""

DEFECT_CLASSES: tuple[int, ...] = (1, 2, 3, 4)
"""Class ids the renderer can draw: 1 crack, 2 scratch, 3 dent, 4 other (scale/pitting)."""

CSV_HEADER: tuple[str, str, str] = ("ImageId", "ClassId", "EncodedPixels")
MIN_SHAPE: tuple[int, int] = (32, 128)

_EPS = 0.03  # smallest relative intensity change that counts as drawn (and goes into the mask)
_EDGE_BAND_RATE = 0.3  # share of frames that show the dark background beyond the strip edge


# --------------------------------------------------------------------------------------------------- mix


def parse_mix(text: str) -> dict[int, float]:
    """Parse ``"0=0.5,1=0.2,..."`` into ``{class_id: share}`` normalised to sum 1; ValueError on bad input."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("class mix is empty; expected e.g. '0=0.5,1=0.2,2=0.1,3=0.1,4=0.1'")
    mix: dict[int, float] = {}
    for part in text.split(","):
        item = part.strip()
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"class mix item {item!r} is not of the form ID=SHARE (e.g. '3=0.3')")
        try:
            cid = int(key.strip())
        except ValueError:
            raise ValueError(f"class mix item {item!r}: class id {key.strip()!r} is not an integer") from None
        try:
            share = float(value.strip())
        except ValueError:
            raise ValueError(f"class mix item {item!r}: share {value.strip()!r} is not a number") from None
        if cid in mix:
            raise ValueError(f"class mix names class {cid} twice")
        mix[cid] = share
    return _normalise_mix(mix)


def _normalise_mix(mix: dict[int, float]) -> dict[int, float]:
    """Check ids and shares and scale the shares to sum 1."""
    if not mix:
        raise ValueError("class mix is empty")
    known = (0, *DEFECT_CLASSES)
    for cid, share in mix.items():
        if isinstance(cid, bool) or not isinstance(cid, int | np.integer) or int(cid) not in known:
            raise ValueError(f"class mix: unknown class id {cid!r}; known ids are {list(known)}")
        if not math.isfinite(float(share)) or float(share) < 0:
            raise ValueError(f"class mix: share of class {cid} must be a finite number >= 0, got {share!r}")
    total = float(sum(float(s) for s in mix.values()))
    if total <= 0:
        raise ValueError("class mix: shares sum to 0; at least one class needs a positive share")
    return {int(cid): float(share) / total for cid, share in sorted(mix.items())}


# ------------------------------------------------------------------------------------------ noise fields


@lru_cache(maxsize=64)
def _interp_plan(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and smoothstep weights that stretch ``n_in`` grid points over ``n_out`` samples."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in - 1) / n_out
    i0 = np.minimum(pos.astype(np.intp), n_in - 2)
    frac = pos - i0
    weight = (frac * frac * (3.0 - 2.0 * frac)).astype(np.float32)
    i0.flags.writeable = False
    weight.flags.writeable = False
    return i0, weight


def _upsample(grid: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Smooth (smoothstep) interpolation of ``grid`` to ``n_out`` samples along ``axis``.

    Element-wise arithmetic only (no BLAS), so results do not depend on thread count.
    """
    i0, weight = _interp_plan(grid.shape[axis], n_out)
    lo = np.take(grid, i0, axis=axis)
    hi = np.take(grid, i0 + 1, axis=axis)
    shape = [1] * grid.ndim
    shape[axis] = n_out
    lo += (hi - lo) * weight.reshape(shape)
    return lo


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise field of ``shape`` with about ``cells`` bumps along each axis (roughly N(0, 1))."""
    grid = rng.standard_normal((max(cells[0], 1) + 1, max(cells[1], 1) + 1), dtype=np.float32)
    return _upsample(_upsample(grid, shape[0], 0), shape[1], 1)


def _smooth_1d(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Low-frequency 1-D noise of length ``n`` (roughly N(0, 1))."""
    grid = rng.standard_normal(max(cells, 1) + 1, dtype=np.float32)
    return _upsample(grid, n, 0)


# ------------------------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Steel-strip texture (float32 grey levels) and the column range ``[lo, hi)`` that shows the strip.

    Rolling streaks along the strip (rows), grain, uneven lighting and, in about 30% of frames, a dark band
    beyond the strip edge on the left or right.
    """
    h, w = shape
    base = rng.uniform(110.0, 170.0)  # strip brightness 0.43-0.67: neither glare variant (+-0.3) erases it
    lighting = _smooth_noise(rng, shape, (1, max(2, w // 500)))
    lighting *= rng.uniform(0.04, 0.1)
    # Rolling streaks: each row has its own offset that drifts slowly along the strip.
    rows = rng.standard_normal((h, max(2, w // 100) + 1), dtype=np.float32)
    rows[1:] += 0.5 * rows[:-1]
    streaks = _upsample(rows, w, 1)
    streaks *= rng.uniform(0.012, 0.035)
    for _ in range(int(rng.integers(0, 6))):  # a few pronounced roll marks
        y = int(rng.integers(0, h))
        thick = int(rng.integers(1, 4))
        amp = rng.uniform(0.03, 0.08) * rng.choice((-1.0, 1.0))
        fade = 0.5 + 0.5 * np.clip(_smooth_1d(rng, w, 4), -1.0, 1.0)
        streaks[y : y + thick] += (amp * fade).astype(np.float32)
    # Grain, slightly smeared along the rolling direction.
    grain = rng.standard_normal(shape, dtype=np.float32)
    grain[:, 1:] += 0.6 * grain[:, :-1]
    grain *= rng.uniform(0.02, 0.045)

    img = lighting
    img += 1.0
    streaks += grain
    streaks += 1.0
    img *= streaks
    img *= np.float32(base)

    lo, hi = 0, w
    if rng.random() < _EDGE_BAND_RATE:
        band = int(rng.uniform(0.04, 0.22) * w + 0.5)
        soft = rng.uniform(1.5, 5.0)
        dark = np.float32(rng.uniform(0.06, 0.22) * base)
        cols = min(w, band + int(6 * soft) + 1)
        x = np.arange(cols, dtype=np.float32)
        z = np.clip((x - band) / soft, -30.0, 30.0)
        strip = 1.0 / (1.0 + np.exp(-z))  # 0 beyond the edge, 1 on the strip
        if rng.random() < 0.5:  # left edge
            view = img[:, :cols]
            lo = min(w - 1, band + int(4 * soft))
        else:  # right edge: mirror the profile
            strip = strip[::-1]
            view = img[:, w - cols :]
            hi = max(lo + 1, w - band - int(4 * soft))
        background = dark * (1.0 + 3.0 * grain[:, : view.shape[1]])
        view *= strip
        view += background * (1.0 - strip)
    return img, (lo, hi)


# ---------------------------------------------------------------------------------------------- defects


def _place(rng: np.random.Generator, lo: float, hi: float, size: float) -> float:
    """Random start in ``[lo, hi - size]`` (clamped to ``lo`` when the object does not fit)."""
    return float(rng.uniform(lo, max(lo, hi - size)))


def _jagged_path(rng: np.random.Generator, length: float, heading: float) -> np.ndarray:
    """Points (y, x) of a jagged line of about ``length`` px starting at the origin."""
    step = rng.uniform(3.0, 5.0)
    n = max(2, int(length / step))
    noise = rng.normal(0.0, 0.45, n)
    angles = np.empty(n)
    theta = heading
    for i in range(n):  # n <= ~70: a short loop over segments, not pixels
        theta = heading + 0.55 * (theta - heading) + noise[i]
        angles[i] = theta
    steps = step * np.stack((np.sin(angles), np.cos(angles)), axis=1)
    return np.concatenate((np.zeros((1, 2)), np.cumsum(steps, axis=0)))


def _rasterise(points: np.ndarray, shape: tuple[int, int], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (rows, cols) covered by a polyline through ``points`` with a square brush of ``width`` px."""
    t = np.linspace(0.0, 1.0, 12, endpoint=False)
    p0, p1 = points[:-1], points[1:]
    dense = (p0[:, None, :] + (p1 - p0)[:, None, :] * t[None, :, None]).reshape(-1, 2)
    dense = np.concatenate((dense, points[-1:]))
    centre = np.rint(dense).astype(np.intp)
    offsets = np.arange(-((width - 1) // 2), width // 2 + 1)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    ys = (centre[:, 0, None] + oy.ravel()[None, :]).ravel()
    xs = (centre[:, 1, None] + ox.ravel()[None, :]).ravel()
    keep = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    return ys[keep], xs[keep]


def _draw_crack(rng: np.random.Generator, delta: np.ndarray, strip: tuple[int, int]) -> None:
    """Class 1: thin, dark, jagged and branching lines, mostly across the strip (vertical), 40-200 px."""
    h = delta.shape[0]
    lo, hi = strip
    for _ in range(int(rng.integers(1, 3))):
        length = min(rng.uniform(40.0, 200.0), 0.9 * h)
        contrast = rng.uniform(0.45, 0.7)
        width = int(rng.integers(1, 4))
        heading = math.pi / 2 + rng.normal(0.0, 0.25)
        paths = [(_jagged_path(rng, length, heading), width)]
        for _ in range(int(rng.integers(0, 3))):  # branches leave the main line at an angle
            main = paths[0][0]
            start = main[int(rng.integers(1, len(main)))]
            turn = rng.uniform(0.5, 1.2) * rng.choice((-1.0, 1.0))
            branch = _jagged_path(rng, length * rng.uniform(0.2, 0.45), heading + turn) + start
            paths.append((branch, max(1, width - 1)))
        allpts = np.concatenate([p for p, _ in paths])
        (ymin, xmin), (ymax, xmax) = allpts.min(axis=0), allpts.max(axis=0)
        dy = _place(rng, 1.0, h - 2.0, ymax - ymin) - ymin
        dx = _place(rng, lo + 2.0, hi - 3.0, xmax - xmin) - xmin
        offset = np.array((dy, dx))
        layer = np.zeros_like(delta)
        for path, brush in paths:
            ys, xs = _rasterise(path + offset, delta.shape, brush + 2)  # 1-px halo, lightly darkened
            layer[ys, xs] = np.minimum(layer[ys, xs], -0.35 * contrast)
        for path, brush in paths:
            ys, xs = _rasterise(path + offset, delta.shape, brush)
            layer[ys, xs] = -contrast * rng.uniform(0.85, 1.0, ys.size).astype(np.float32)
        np.minimum(delta, layer, out=delta)


def _draw_scratch(rng: np.random.Generator, delta: np.ndarray, strip: tuple[int, int]) -> None:
    """Class 2: long, straight, thin bright-or-dark lines along the rolling direction, 200-900 px."""
    h = delta.shape[0]
    lo, hi = strip
    sign = rng.choice((-1.0, 1.0))  # all scratches of one image share a polarity
    for _ in range(int(rng.integers(1, 3))):
        length = min(rng.uniform(200.0, 900.0), 0.9 * (hi - lo))
        slope = math.tan(float(np.clip(rng.normal(0.0, 0.05), -0.14, 0.14)))
        width = rng.uniform(1.0, 4.0)
        contrast = rng.uniform(0.15, 0.32)
        rise = slope * length
        x0 = _place(rng, lo + 1.0, hi - 1.0, length)
        y_lo, y_hi = 3.0 - min(rise, 0.0), h - 4.0 - max(rise, 0.0)
        y0 = rng.uniform(y_lo, y_hi) if y_hi > y_lo else h / 2 - rise / 2
        xs = np.arange(int(x0), min(int(x0 + length), hi))
        n = xs.size
        yc = (y0 + slope * (xs - x0)).astype(np.float32)
        along = 0.75 + 0.25 * np.clip(_smooth_1d(rng, n, max(1, n // 120)), -1.0, 1.0)
        taper = np.minimum(1.0, np.minimum(np.arange(n) + 1, n - np.arange(n)) / max(4.0, 0.04 * n))
        strength = (sign * contrast * along * taper).astype(np.float32)
        reach = math.ceil(width / 2 + 1.0)
        ys = np.floor(yc).astype(np.intp)[None, :] + np.arange(-reach, reach + 2)[:, None]
        cover = np.clip(width / 2 + 1.0 - np.abs(ys - yc[None, :]), 0.0, 1.0)  # 1-px soft edge
        values = (cover * strength[None, :]).astype(np.float32)
        cols = np.broadcast_to(xs[None, :], ys.shape)
        keep = (ys >= 0) & (ys < h) & (cover > 0)
        ys, cols, values = ys[keep], cols[keep], values[keep]
        current = delta[ys, cols]
        delta[ys, cols] = np.where(np.abs(values) > np.abs(current), values, current)


def _draw_dent(rng: np.random.Generator, delta: np.ndarray, strip: tuple[int, int]) -> None:
    """Class 3: shaded elliptical patches 20-120 px, darker centre and a slight bright rim."""
    h = delta.shape[0]
    lo, hi = strip
    centre: tuple[float, float] | None = None
    light = rng.uniform(0.0, 2 * math.pi)  # direction the light comes from, shared by all dents of the image
    for _ in range(int(rng.integers(1, 4))):
        diameter = min(rng.uniform(20.0, 120.0), 0.8 * h, 0.8 * (hi - lo))
        a = diameter / 2
        b = a * rng.uniform(0.45, 1.0)
        rot = rng.uniform(0.0, math.pi)
        contrast = rng.uniform(0.2, 0.4)
        if centre is not None and rng.random() < 0.6:  # clustered
            cy = float(np.clip(centre[0] + rng.normal(0, 1.5 * a), a, h - a))
            cx = float(np.clip(centre[1] + rng.normal(0, 3.0 * a), lo + a, max(lo + a, hi - a)))
        else:
            cy = _place(rng, 0.0, h, 2 * a) + a
            cx = _place(rng, lo, hi, 2 * a) + a
            centre = (cy, cx)
        reach = math.ceil(1.3 * a) + 1
        y0, y1 = max(0, int(cy) - reach), min(h, int(cy) + reach + 1)
        x0, x1 = max(lo, int(cx) - reach), min(hi, int(cx) + reach + 1)
        yy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        xx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        cos, sin = math.cos(rot), math.sin(rot)
        u = (xx * cos + yy * sin) / a
        v = (yy * cos - xx * sin) / b
        r = np.sqrt(u * u + v * v)
        angle = np.arctan2(v, u)
        phases = rng.uniform(0.0, 2 * math.pi, 2)
        wobble = 1.0 + 0.06 * np.sin(2.0 * angle + phases[0]) + 0.05 * np.sin(3.0 * angle + phases[1])
        r /= wobble
        inner = np.clip(1.0 - r * r, 0.0, 1.0)
        shade = -contrast * inner**0.7
        side = 1.0 + 0.6 * (u * math.cos(light) + v * math.sin(light)) / np.maximum(r, 1e-3)
        rim = 0.35 * contrast * side * np.exp(-(((r - 1.0) / 0.12) ** 2))
        patch = np.where(r < 1.3, shade + rim, 0.0).astype(np.float32)
        region = delta[y0:y1, x0:x1]
        region += patch
        np.clip(region, -0.8, 0.8, out=region)


def _draw_other(rng: np.random.Generator, delta: np.ndarray, strip: tuple[int, int]) -> None:
    """Class 4: a large irregular area of scale/pitting: blotchy darkening with dense dark speckle."""
    h = delta.shape[0]
    lo, hi = strip
    bw = int(min(rng.uniform(100.0, 400.0), 0.8 * (hi - lo)))
    bh = int(min(h, max(16, rng.uniform(0.4, 1.0) * h)))
    y0 = int(_place(rng, 0.0, h, bh))
    x0 = int(_place(rng, lo, hi, bw))
    bh, bw = min(bh, h - y0), min(bw, hi - x0)
    yy = np.linspace(-1.0, 1.0, bh, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, bw, dtype=np.float32)[None, :]
    envelope = np.clip(1.0 - (xx * xx + yy * yy), 0.0, 1.0)
    shape_noise = np.clip(_smooth_noise(rng, (bh, bw), (3, 4)), -1.5, 1.5)
    alpha = np.clip((envelope - 0.3 + 0.35 * shape_noise) * 4.0, 0.0, 1.0)  # centre always > 0
    alpha *= np.clip(envelope * 5.0, 0.0, 1.0)  # and nothing at the box's border
    blotch = np.clip(_smooth_noise(rng, (bh, bw), (max(2, bh // 12), max(2, bw // 12))), -1.0, 2.0)
    hb, wb = (bh + 1) // 2, (bw + 1) // 2
    specks = (rng.random((hb, wb), dtype=np.float32) < rng.uniform(0.12, 0.25)).astype(np.float32)
    specks = np.repeat(np.repeat(specks, 2, axis=0), 2, axis=1)[:bh, :bw]  # 2x2 pits survive downscaling
    depth = rng.uniform(0.12, 0.2) + 0.12 * blotch + rng.uniform(0.3, 0.45) * specks
    patch = -alpha * np.clip(depth, 0.06, 0.75)
    region = delta[y0 : y0 + bh, x0 : x0 + bw]
    np.minimum(region, patch.astype(np.float32), out=region)


_DRAW = {1: _draw_crack, 2: _draw_scratch, 3: _draw_dent, 4: _draw_other}


def render_image(
    rng: np.random.Generator, classes: Sequence[int], shape: tuple[int, int] = SEVERSTAL_SHAPE
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Draw one steel frame with the defects of ``classes`` (ids 1-4; 0 is ignored).

    Returns the uint8 ``shape`` image and ``{class_id: uint8 0/1 mask}`` of exactly the pixels each defect
    changed (every mask non-empty). The background is drawn first, so the same generator state with no
    classes gives the defect-free frame (the tests rely on this).
    """
    h, w = int(shape[0]), int(shape[1])
    if h < MIN_SHAPE[0] or w < MIN_SHAPE[1]:
        raise ValueError(f"shape {shape} is too small; need at least {MIN_SHAPE} (height, width)")
    wanted = [int(c) for c in classes if int(c) != 0]
    unknown = sorted(set(wanted) - set(DEFECT_CLASSES))
    if unknown:
        raise ValueError(f"cannot draw class ids {unknown}; known defect ids are {list(DEFECT_CLASSES)}")
    img, strip = _background(rng, (h, w))
    masks: dict[int, np.ndarray] = {}
    for cid in dict.fromkeys(wanted):  # unique, in the given order
        delta = np.zeros((h, w), dtype=np.float32)
        for _attempt in range(5):
            _DRAW[cid](rng, delta, strip)
            delta[np.abs(delta) < _EPS] = 0.0
            if delta.any():
                break
        else:  # pragma: no cover - each drawer always leaves pixels above _EPS
            raise RuntimeError(f"class {cid} drew nothing in 5 attempts")
        masks[cid] = (delta != 0).view(np.uint8)
        delta += 1.0
        img *= delta
    np.clip(img, 0.0, 255.0, out=img)
    img += 0.5
    return img.astype(np.uint8), masks


# ---------------------------------------------------------------------------------------------- dataset


def image_id(seed: int, index: int, salt: int = 0) -> str:
    """Severstal-like image id (9 lowercase hex chars + ``.jpg``) derived from ``(seed, index)``."""
    text = f"steelqc-synth:{seed}:{index}:{salt}".encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()[:9] + ".jpg"


def image_ids(seed: int, n_images: int) -> list[str]:
    """Unique ids for images ``0..n-1``; a (rare) collision takes the next salt, in index order."""
    seen: set[str] = set()
    ids: list[str] = []
    for index in range(n_images):
        salt = 0
        name = image_id(seed, index)
        while name in seen:
            salt += 1
            name = image_id(seed, index, salt)
        seen.add(name)
        ids.append(name)
    return ids


def _sample_classes(
    rng: np.random.Generator,
    mix: dict[int, float],
    priority: list[int],
    multi_defect_rate: float,
) -> tuple[int, list[int]]:
    """Single label drawn from ``mix`` and the defect classes to draw (label first, then an optional extra)."""
    ids = list(mix)
    cum = np.cumsum([mix[c] for c in ids])
    cum[-1] = 1.0
    label = ids[int(np.searchsorted(cum, rng.random(), side="right"))]
    if label == 0:
        return 0, []
    classes = [label]
    if rng.random() < multi_defect_rate:
        lower = priority[priority.index(label) + 1 :]
        weights = np.array([mix.get(c, 0.0) for c in lower])
        if weights.sum() > 0:  # a class with share 0 never appears, not even as the extra defect
            extra = lower[int(rng.choice(len(lower), p=weights / weights.sum()))]
            classes.append(extra)
    return label, classes


def _check_args(
    n_images: int,
    seed: int,
    shape: tuple[int, int],
    multi_defect_rate: float,
    jpeg_quality: int,
    mix: dict[int, float],
    class_names: dict[int, str],
    priority: list[int],
) -> None:
    if isinstance(n_images, bool) or not isinstance(n_images, int | np.integer) or n_images < 0:
        raise ValueError(f"n_images must be an integer >= 0, got {n_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if len(shape) != 2 or shape[0] < MIN_SHAPE[0] or shape[1] < MIN_SHAPE[1]:
        raise ValueError(f"shape must be (height, width) of at least {MIN_SHAPE}, got {shape!r}")
    if not 0.0 <= multi_defect_rate <= 1.0:
        raise ValueError(f"multi_defect_rate must be in [0, 1], got {multi_defect_rate!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality!r}")
    used = {c for c, share in mix.items() if share > 0}
    missing = sorted((used | {0}) - set(class_names))
    if missing:
        raise ValueError(f"class_names must name class 0 and every class in the mix; missing ids {missing}")
    if len(set(priority)) != len(priority) or 0 in priority or not set(priority) <= set(DEFECT_CLASSES):
        raise ValueError(f"label_priority must list distinct defect ids from {list(DEFECT_CLASSES)}")
    missing = sorted(used - {0} - set(priority))
    if missing:
        raise ValueError(f"label_priority leaves out defect classes {missing} of the mix")


def _prepare_out(out: Path, overwrite: bool) -> tuple[Path, Path]:
    """Create ``out/train_images``; refuse to replace an existing data set unless ``overwrite``."""
    csv_path, images_dir = out / "train.csv", out / "train_images"
    old_images = sorted(images_dir.glob("*.jpg")) if images_dir.is_dir() else []
    if not overwrite and (csv_path.exists() or old_images):
        what = str(csv_path) if csv_path.exists() else f"{len(old_images)} images in {images_dir}"
        raise ValueError(
            f"{out} already holds a data set ({what}); pass overwrite=True (CLI: --overwrite) to replace it"
        )
    if overwrite and (csv_path.exists() or old_images):
        log.warning("replacing the data set in %s (%d old images)", out, len(old_images))
        csv_path.unlink(missing_ok=True)
        for path in old_images:
            path.unlink()
    images_dir.mkdir(parents=True, exist_ok=True)
    return csv_path, images_dir


def generate_dataset(
    out: Path,
    n_images: int,
    seed: int = 42,
    mix: dict[int, float] | None = None,
    shape: tuple[int, int] = SEVERSTAL_SHAPE,
    multi_defect_rate: float = 0.05,
    jpeg_quality: int = 90,
    class_names: dict[int, str] | None = None,
    label_priority: list[int] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``out/train.csv`` and ``out/train_images/*.jpg`` and return a summary.

    Summary keys: ``out``, ``train_csv``, ``n_images``, ``by_class`` (images per single label, by class name),
    ``masks_by_class`` (mask rows per class name), ``seconds``, ``images_per_second``.
    Raises ValueError on bad arguments or when ``out`` already holds a data set and ``overwrite`` is False.
    """
    names = dict(DEFAULT_CLASS_NAMES if class_names is None else class_names)
    mix_n = _normalise_mix(dict(DEFAULT_MIX if mix is None else mix))
    if label_priority is None:
        priority = label_priority_ids(dict(DEFAULT_CLASS_NAMES), "crack")
    else:
        priority = [int(c) for c in label_priority]
    shape = (int(shape[0]), int(shape[1]))
    _check_args(n_images, seed, shape, multi_defect_rate, jpeg_quality, mix_n, names, priority)
    priority += [c for c in DEFECT_CLASSES if c not in priority]  # classes with share 0 go last

    out = Path(out)
    csv_path, images_dir = _prepare_out(out, overwrite)
    ids = image_ids(int(seed), int(n_images))
    by_class = dict.fromkeys(names.values(), 0)
    masks_by_class = dict.fromkeys((n for c, n in names.items() if c != 0), 0)
    rows: list[tuple[str, int, str]] = []
    log.info("generating %d synthetic images (seed %d, shape %s) into %s", n_images, seed, shape, out)
    start = time.perf_counter()
    report_every = max(1, n_images // 10)
    for index, name in enumerate(ids):
        rng = np.random.default_rng([int(seed), index])
        label, classes = _sample_classes(rng, mix_n, priority, multi_defect_rate)
        img, masks = render_image(rng, classes, shape)
        Image.fromarray(img, mode="L").save(images_dir / name, "JPEG", quality=jpeg_quality)
        by_class[names[label]] += 1
        for cid in sorted(masks):
            rows.append((name, cid, rle_encode(masks[cid])))
            masks_by_class[names[cid]] += 1
        if (index + 1) % report_every == 0:
            log.info("  %d/%d images", index + 1, n_images)
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    seconds = time.perf_counter() - start
    rate = n_images / seconds if seconds > 0 else float("inf")
    log.info("wrote %d images and %d mask rows in %.1f s (%.1f images/s)", n_images, len(rows), seconds, rate)
    return {
        "out": str(out),
        "train_csv": str(csv_path),
        "n_images": int(n_images),
        "by_class": by_class,
        "masks_by_class": masks_by_class,
        "seconds": round(seconds, 3),
        "images_per_second": round(rate, 2),
    }
