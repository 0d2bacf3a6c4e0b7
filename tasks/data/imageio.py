"""The one image decoder of steelqc: ingest checks with it, training, evaluation and inference read with it.

:func:`decode_image` turns an image file (read by content, never by extension) into a uint8 HxW grey array
(``channels=1``) or a uint8 HxWx3 RGB array (``channels=3``). Every Pillow mode in :data:`SUPPORTED_MODES` is
converted explicitly, so no pixel is silently clipped or misread; anything else raises :class:`UnsupportedImage`,
and ingest quarantines it with :func:`unsupported_mode_reason` (same list, so the two cannot disagree).

Conversions (``channels=1``):

* ``L``: as stored. ``1``: 0 or 255.
* ``RGB``, ``RGBX``, ``RGBA``: luminance exactly as Pillow's ``convert("L")`` (ITU-R 601-2:
  ``L = 0.299 R + 0.587 G + 0.114 B``, rounded). ``P``, ``PA`` (palette), ``CMYK`` and ``YCbCr`` go through RGB
  first.
* Alpha (``LA``, ``PA``, ``RGBA``) is dropped, not composited: the colour stored under a transparent pixel is
  what the camera recorded, and a background colour to composite onto would be an invention. Ingest notes a
  partly transparent image in the manifest.
* 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) is scaled by the full 16-bit range:
  ``round(v * 255 / 65535)`` (= ``round(v / 257)``), so 8-bit data widened the standard way (``v * 257``) comes
  back exactly. Not by the image's own min/max (that would stretch each image differently) and not by a declared
  bit depth (PNG's sBIT is rarely written, TIFF says 16 for 12-bit data): 12-bit data in a 16-bit container comes
  out dark (0..16), which per-image standardisation in training undoes, and ingest notes the largest value.
* ``I`` (32-bit integer, e.g. a 32-bit TIFF): scaled as 16-bit when every value lies in 0..65535, refused
  otherwise (the scale is unknown).
* Not supported, so quarantined at ingest: ``F`` (32-bit float: the scale, 0..1 or 0..255 or anything, is
  unknown), ``LAB``, ``HSV``, premultiplied ``La``/``RGBa`` and any other mode.

Conversions (``channels=3``), the same mode table and rules:

* ``RGB``: as stored. ``RGBX``, ``RGBA``: the three colour channels (padding and alpha dropped, not composited).
  ``P``, ``PA`` through RGBA (the palette colours), ``CMYK`` and ``YCbCr`` through Pillow's RGB conversion.
* Grey modes (``1``, ``L``, ``LA``, 16-bit, ``I``) are decoded to grey exactly as above and replicated to three
  equal channels, so a grey image reads the same in a colour data set as in a grey one.

Whether a data set is fed as colour is ingest's decision (:func:`channel_spread` measures an image; the rule is
in :mod:`steelqc.tasks.data.ingest`); :func:`luminance` gives the grey image of an RGB array, identical to what
``channels=1`` decodes from an RGB file.

Files are opened only when they are regular files (checked with ``stat`` before ``open`` and ``fstat`` after an
``O_NONBLOCK`` open), so a FIFO, socket or device handed to the decoder is refused instead of blocking.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from steelqc.tasks.config import DEFAULT_MAX_IMAGE_PIXELS

SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
"""16-bit unsigned grey modes, scaled to 8 bits by ``round(v * 255 / 65535)``."""
_DIRECT_TO_L = frozenset({"1", "L", "LA", "RGB", "RGBX", "RGBA"})
"""Modes whose conversion to L in Pillow is exact (alpha dropped, RGB to ITU-R 601-2 luminance)."""
_VIA_RGBA = frozenset({"P", "PA"})
"""Palette modes: expanded to RGBA (keeps a transparency entry out of the way), then to luminance."""
_VIA_RGB = frozenset({"CMYK", "YCbCr"})
"""Colour spaces converted to RGB by Pillow, then to luminance."""
COLOUR_MODES: frozenset[str] = frozenset({"RGB", "RGBX", "RGBA"}) | _VIA_RGBA | _VIA_RGB
"""Modes that can hold colour; every other supported mode is grey (decoded with ``channels=3``: replicated)."""
CHANNEL_OPTIONS = (1, 3)
SUPPORTED_MODES: frozenset[str] = _DIRECT_TO_L | _VIA_RGBA | _VIA_RGB | SIXTEEN_BIT_MODES | {"I"}
"""Every Pillow mode :func:`decode_image` converts; ingest quarantines any other."""
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
_WHY_NOT: dict[str, str] = {
    "F": "32-bit float pixels, whose scale (0..1, 0..255, ...) is unknown",
    "LAB": "CIELAB colour, which Pillow cannot convert to RGB",
    "HSV": "HSV colour",
    "La": "premultiplied alpha",
    "RGBa": "premultiplied alpha",
}
_UINT16_MAX = 65535


class UnsupportedImage(ValueError):
    """An image the decoder cannot convert faithfully; the message is the reason (ingest quarantines it)."""


class NotRegularFile(OSError):
    """A path that is not a regular file (FIFO, socket, device, folder); refused without reading it."""


def unsupported_mode_reason(mode: str) -> str | None:
    """Why images of Pillow mode ``mode`` cannot be decoded, naming the mode; None when the mode is supported."""
    if mode in SUPPORTED_MODES:
        return None
    why = _WHY_NOT.get(mode, "not a mode steelqc converts")
    return f"unsupported pixel mode {mode} ({why}); supported: {', '.join(sorted(SUPPORTED_MODES))}"


def file_kind(st_mode: int) -> str:
    """A readable name for the file type in ``st_mode`` (from ``os.stat``/``os.lstat``)."""
    kinds = (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return next((name for test, name in kinds if test(st_mode)), f"special file (mode {stat.S_IFMT(st_mode):#o})")


def _refuse_unless_regular(st_mode: int) -> None:
    if not stat.S_ISREG(st_mode):
        raise NotRegularFile(f"{file_kind(st_mode)}: not a regular file, not read")


def open_regular_file(path: str | Path) -> BinaryIO:
    """Open ``path`` for binary reading only if it is (or links to) a regular file; never blocks.

    ``stat`` before ``open`` keeps devices from being opened at all; the ``O_NONBLOCK`` open and the ``fstat``
    after it close the race where the file is swapped for a FIFO in between. Raises :class:`NotRegularFile`
    or the ``OSError`` of ``stat``/``open``.
    """
    _refuse_unless_regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, at most ``max_bytes + 1`` of them (more means the file is too big)."""
    with open_regular_file(path) as fh:
        return fh.read(max_bytes + 1)


def _scale_16_bit(values: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255 by ``round(v * 255 / 65535)`` (exact integer arithmetic; no ties occur)."""
    wide = values.astype(np.uint32)
    return ((wide * 255 + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8)


def _int32_as_16_bit(image: Image.Image) -> np.ndarray:
    values = np.asarray(image, dtype=np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > _UINT16_MAX:
        raise UnsupportedImage(
            f"pixel mode I (32-bit integer) with values {low}..{high}, outside 0..{_UINT16_MAX}: "
            "its scale is unknown; save it as 8- or 16-bit grey"
        )
    return _scale_16_bit(values)


def _check_channels(channels: int) -> None:
    if channels not in CHANNEL_OPTIONS:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")


def _grey(image: Image.Image) -> np.ndarray:
    """A supported mode's pixels as uint8 HxW grey (the ``channels=1`` table of the module doc)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        return _scale_16_bit(np.asarray(image))
    if mode == "I":
        return _int32_as_16_bit(image)
    if mode in _VIA_RGBA:
        return np.asarray(image.convert("RGBA").convert("L"))
    if mode in _VIA_RGB:
        return np.asarray(image.convert("RGB").convert("L"))
    return np.asarray(image if mode == "L" else image.convert("L"))


def _rgb(image: Image.Image) -> np.ndarray:
    """A supported mode's pixels as uint8 HxWx3 RGB (the ``channels=3`` table: grey modes replicated)."""
    mode = image.mode
    if mode not in COLOUR_MODES:
        return np.repeat(np.asarray(_grey(image), dtype=np.uint8)[..., None], 3, axis=2)
    if mode in _VIA_RGBA:
        return np.asarray(image.convert("RGBA").convert("RGB"))
    return np.asarray(image if mode == "RGB" else image.convert("RGB"))


def image_to_array(image: Image.Image, channels: int = 1) -> np.ndarray:
    """Pixels of an open Pillow image as uint8 HxW grey (``channels=1``) or HxWx3 RGB (``channels=3``).

    Raises :class:`UnsupportedImage` for a mode outside :data:`SUPPORTED_MODES` (or mode ``I`` values outside
    0..65535), ``ValueError`` for another ``channels``, and Pillow's ``OSError`` for a truncated or corrupt file.
    """
    _check_channels(channels)
    if reason := unsupported_mode_reason(image.mode):
        raise UnsupportedImage(reason)
    pixels = _grey(image) if channels == 1 else _rgb(image)
    return np.array(pixels, dtype=np.uint8, copy=True)


def check_pixels(image: Image.Image, max_pixels: int) -> None:
    """Refuse an image whose header claims more than ``max_pixels`` pixels, before any pixel is decoded (a
    decompression bomb: a few kilobytes that decode to gigabytes)."""
    width, height = image.size
    if width * height > max_pixels:
        raise UnsupportedImage(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(max_image_pixels; possible decompression bomb): refused without decoding"
        )


def decode_image(
    source: str | Path | BinaryIO, channels: int = 1, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Decode an image file or binary file object by content to uint8 HxW grey (``channels=1``) or HxWx3 RGB
    (``channels=3``), see the module doc.

    A path must be a regular file (or a symlink to one): anything else raises :class:`NotRegularFile`
    without being read. An image claiming more than ``max_pixels`` pixels raises :class:`UnsupportedImage`
    undecoded (:func:`check_pixels`).
    """
    _check_channels(channels)
    if isinstance(source, str | Path):
        with open_regular_file(source) as fh, Image.open(fh) as image:
            check_pixels(image, max_pixels)
            return image_to_array(image, channels)
    with Image.open(source) as image:
        check_pixels(image, max_pixels)
        return image_to_array(image, channels)


def luminance(img: np.ndarray) -> np.ndarray:
    """The grey image of a uint8 image: HxW as it is; HxWx3 RGB by Pillow's ITU-R 601-2 luma (exactly what
    ``channels=1`` decodes from an RGB file: ``(19595 R + 38470 G + 7471 B + 32768) >> 16``)."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"expected a uint8 HxW or HxWx3 image, got {img.dtype} {img.shape}")
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[..., 0]
    return np.asarray(Image.fromarray(np.ascontiguousarray(img), "RGB").convert("L"))


def channel_spread(img: np.ndarray, quantile: float = 0.99) -> float:
    """How colourful a uint8 image is, in grey levels: the ``quantile`` (0..1) over pixels of each pixel's
    channel spread ``max(R, G, B) - min(R, G, B)``. 0 for a grey (HxW) image and for equal channels; at the
    default 0.99 it exceeds ``t`` exactly when more than 1 % of the pixels differ between channels by more than
    ``t`` grey levels (a colour patch of a few percent of the image counts, a few stray pixels do not)."""
    if img.ndim == 2 or img.size == 0:
        return 0.0
    spread = np.maximum(np.maximum(img[..., 0], img[..., 1]), img[..., 2]) - np.minimum(
        np.minimum(img[..., 0], img[..., 1]), img[..., 2]
    )
    counts = np.cumsum(np.bincount(spread.ravel(), minlength=256))
    return float(np.searchsorted(counts, quantile * counts[-1]))


def conversion_note(image: Image.Image) -> str:
    """What decoding changes beyond the usual grey conversion (for the manifest's note column), else ``""``.

    16-bit and 32-bit integer grey: the scaling and the largest value (12-bit data shows up as a small maximum);
    partly transparent images: the alpha channel is ignored. Loads the image.
    """
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image)
        high = int(values.max()) if values.size else 0
        return f"{mode} grey scaled to 8 bits (v*255/65535); largest value {high}"
    if mode in _ALPHA_MODES:
        alpha = np.asarray(image.getchannel("A"))
        if alpha.size and int(alpha.min()) < 255:
            return f"{mode}: partly transparent, alpha ignored"
    return ""
