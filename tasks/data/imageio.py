"""The one image decoder of steelqc: ingest checks with it, training, evaluation and inference read with it.

:func:`decode_image` turns an image file (read by content, never by extension) into a uint8 HxW grey array.
Every Pillow mode in :data:`SUPPORTED_MODES` is converted explicitly, so no pixel is silently clipped or
misread; anything else raises :class:`UnsupportedImage`, and ingest quarantines it with
:func:`unsupported_mode_reason` (same list, so the two cannot disagree).

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

A later issue keeps colour data as RGB: ``channels`` is the keyword for that; only ``channels=1`` exists today.

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

SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
"""16-bit unsigned grey modes, scaled to 8 bits by ``round(v * 255 / 65535)``."""
_DIRECT_TO_L = frozenset({"1", "L", "LA", "RGB", "RGBX", "RGBA"})
"""Modes whose conversion to L in Pillow is exact (alpha dropped, RGB to ITU-R 601-2 luminance)."""
_VIA_RGBA = frozenset({"P", "PA"})
"""Palette modes: expanded to RGBA (keeps a transparency entry out of the way), then to luminance."""
_VIA_RGB = frozenset({"CMYK", "YCbCr"})
"""Colour spaces converted to RGB by Pillow, then to luminance."""
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


def image_to_array(image: Image.Image, channels: int = 1) -> np.ndarray:
    """Pixels of an open Pillow image as a uint8 HxW grey array (``channels=1``, the only one today).

    Raises :class:`UnsupportedImage` for a mode outside :data:`SUPPORTED_MODES` (or mode ``I`` values outside
    0..65535), and Pillow's ``OSError`` for a truncated or corrupt file.
    """
    if channels != 1:
        raise NotImplementedError("only grey decoding (channels=1) exists so far")
    mode = image.mode
    if reason := unsupported_mode_reason(mode):
        raise UnsupportedImage(reason)
    if mode in SIXTEEN_BIT_MODES:
        grey = _scale_16_bit(np.asarray(image))
    elif mode == "I":
        grey = _int32_as_16_bit(image)
    elif mode in _VIA_RGBA:
        grey = np.asarray(image.convert("RGBA").convert("L"))
    elif mode in _VIA_RGB:
        grey = np.asarray(image.convert("RGB").convert("L"))
    else:
        grey = np.asarray(image if mode == "L" else image.convert("L"))
    return np.array(grey, dtype=np.uint8, copy=True)


def decode_image(source: str | Path | BinaryIO, channels: int = 1) -> np.ndarray:
    """Decode an image file or binary file object by content to a uint8 HxW grey array (see the module doc).

    A path must be a regular file (or a symlink to one): anything else raises :class:`NotRegularFile`
    without being read.
    """
    if isinstance(source, str | Path):
        with open_regular_file(source) as fh, Image.open(fh) as image:
            return image_to_array(image, channels)
    with Image.open(source) as image:
        return image_to_array(image, channels)


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
