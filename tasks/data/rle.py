"""Run-length encoding of Severstal masks.

Format: space-separated pairs ``start length``; starts are 1-indexed positions in the mask flattened
column-major (down the first column, then the next), runs sorted and not overlapping. An empty string is the
empty mask. :func:`rle_decode` and :func:`rle_encode` are exact inverses.
"""

from __future__ import annotations

import re

import numpy as np

from steelqc.tasks.config import SEVERSTAL_SHAPE

_DIGITS_AND_SPACE = re.compile(r"[0-9\s]*", re.ASCII)
_TOKEN = re.compile(r"\S+")


class RLEError(ValueError):
    """A run-length string that is not a valid mask for the given shape."""


def parse_runs(rle: str, shape: tuple[int, int] = SEVERSTAL_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``rle`` for ``shape`` and return 0-based run starts and lengths (int64 arrays).

    Raises :class:`RLEError` naming the fault: odd number of values, a non-integer, start < 1, length < 1,
    a run past the last pixel, runs unsorted or overlapping.
    """
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}")
    if not _DIGITS_AND_SPACE.fullmatch(rle):
        _raise_token_error(rle)
    # Only ASCII digits and white space are left, so the C parser reads every token exactly.
    values = np.fromstring(rle, dtype=np.int64, sep=" ") if rle.strip() else np.empty(0, dtype=np.int64)
    if values.size % 2:
        raise RLEError(f"odd number of values ({values.size}): starts and lengths must come in pairs")
    starts, lengths = values[0::2], values[1::2]
    n_pixels = int(shape[0]) * int(shape[1])
    huge = np.flatnonzero(values > n_pixels)  # also catches values that saturated int64 while parsing
    if huge.size:
        i = int(huge[0])
        kind = "start" if i % 2 == 0 else "length"
        token = _TOKEN.findall(rle)[i]
        raise RLEError(f"run {i // 2 + 1}: {kind} {token} is past the last pixel {n_pixels}")
    if starts.size:
        _check_runs(starts, lengths, n_pixels)
    return starts - 1, lengths


def _raise_token_error(rle: str) -> None:
    """Explain why a string that failed the fast well-formedness check is invalid."""
    tokens = _TOKEN.findall(rle)
    for index, token in enumerate(tokens):
        if token.isascii() and token.isdigit():
            continue
        kind = "start" if index % 2 == 0 else "length"
        try:
            value = int(token)
        except ValueError:
            raise RLEError(f"value {index + 1} ({token!r}) is not an integer") from None
        if value < 1:
            raise RLEError(f"run {index // 2 + 1}: {kind} {token} is less than 1")
        raise RLEError(f"value {index + 1} ({token!r}) is not a plain unsigned integer")
    raise RLEError(f"odd number of values ({len(tokens)}): starts and lengths must come in pairs")


def _check_runs(starts: np.ndarray, lengths: np.ndarray, n_pixels: int) -> None:
    """Range and order checks, vectorised; the message names the first offending run (1-based)."""
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        raise RLEError(f"run {bad[0] + 1}: start {starts[bad[0]]} is less than 1")
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        raise RLEError(f"run {bad[0] + 1}: length {lengths[bad[0]]} is less than 1")
    ends = starts + lengths - 1  # last pixel of each run, 1-based
    bad = np.flatnonzero(ends > n_pixels)
    if bad.size:
        i = bad[0]
        raise RLEError(
            f"run {i + 1} ({starts[i]} {lengths[i]}) ends at pixel {ends[i]}, past the last pixel {n_pixels}"
        )
    bad = np.flatnonzero(starts[1:] <= ends[:-1])
    if bad.size:
        i = bad[0] + 1
        what = "unsorted" if starts[i] < starts[i - 1] else "overlapping"
        raise RLEError(
            f"runs {i} and {i + 1} are {what}: run {i + 1} starts at {starts[i]}, "
            f"run {i} covers {starts[i - 1]}..{ends[i - 1]}"
        )


def rle_decode(rle: str, shape: tuple[int, int] = SEVERSTAL_SHAPE) -> np.ndarray:
    """Decode ``rle`` into a uint8 0/1 mask of ``shape`` (Fortran-ordered: the RLE's own pixel order)."""
    starts, lengths = parse_runs(rle, shape)
    height, width = int(shape[0]), int(shape[1])
    n_pixels = height * width
    if starts.size == 0:
        return np.zeros((width, height), dtype=np.uint8).T
    # Alternate gaps (0) and runs (1): one C-level np.repeat writes the whole flat mask, no per-run Python.
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    ends = starts + lengths
    counts[0] = starts[0]
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = n_pixels - ends[-1]
    counts[1::2] = lengths
    values = np.zeros(counts.size, dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts).reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D 0/1 (or boolean) mask as an RLE string; the empty mask gives ``""``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"mask must be 2-D, got shape {mask.shape}")
    pixels = mask.T.reshape(-1)
    if pixels.dtype != np.bool_:
        if pixels.size and not np.isin(pixels, (0, 1)).all():
            raise RLEError("mask values must be 0 or 1")
        pixels = pixels.astype(bool)
    padded = np.concatenate(([False], pixels, [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    if changes.size == 0:
        return ""
    changes[1::2] -= changes[0::2]
    changes[0::2] += 1
    return " ".join(map(str, changes.tolist()))


def rle_pixel_count(rle: str, shape: tuple[int, int] = SEVERSTAL_SHAPE) -> int:
    """Number of mask pixels of a valid RLE, without building the mask."""
    return int(parse_runs(rle, shape)[1].sum())
