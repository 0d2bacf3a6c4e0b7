"""RLE codec: exact inverses (property tests), precise errors, and the real official masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelqc.tasks.data.rle import RLEError, parse_runs, rle_decode, rle_encode, rle_pixel_count
from tests.helpers import shared_path

SHAPES = st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    h, w = draw(SHAPES)
    bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    return np.array(bits, dtype=np.uint8).reshape(h, w)


@given(masks())
def test_decode_inverts_encode(mask: np.ndarray) -> None:
    decoded = rle_decode(rle_encode(mask), mask.shape)
    assert decoded.dtype == np.uint8 and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)


@st.composite
def canonical_rles(draw: st.DrawFn) -> tuple[str, tuple[int, int]]:
    """Sorted, non-touching runs: the canonical form the encoder writes."""
    h, w = draw(SHAPES)
    n = h * w
    cuts = sorted(draw(st.sets(st.integers(1, n + 1), max_size=min(n + 1, 16))))
    cuts = cuts[: len(cuts) // 2 * 2]
    pairs = [(a, b - a) for a, b in zip(cuts[0::2], cuts[1::2], strict=True)]
    return " ".join(f"{s} {length}" for s, length in pairs), (h, w)


@given(canonical_rles())
def test_encode_inverts_decode(case: tuple[str, tuple[int, int]]) -> None:
    rle, shape = case
    assert rle_encode(rle_decode(rle, shape)) == rle
    assert rle_pixel_count(rle, shape) == int(rle_decode(rle, shape).sum())


def test_column_major_and_one_indexed() -> None:
    mask = rle_decode("1 3 9 2", (4, 3))
    # pixels 1..3 go down the first column; 9..10 start the third column
    expected = np.zeros((4, 3), np.uint8)
    expected[0:3, 0] = 1
    expected[0:2, 2] = 1
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize(
    ("mask_fn", "rle"),
    [
        (lambda m: m, ""),  # empty mask
        (lambda m: m + 1, "1 409600"),  # full mask
        (lambda m: _set(m, 0, 0), "1 1"),  # first pixel
        (lambda m: _set(m, 255, 1599), "409600 1"),  # last pixel
        (lambda m: _set(_set(m, 254, 0), 255, 0) | _set(np.zeros_like(m), 0, 1), "255 3"),  # crosses a column
    ],
)
def test_edge_masks_full_size(mask_fn, rle: str) -> None:
    mask = mask_fn(np.zeros((256, 1600), np.uint8))
    assert rle_encode(mask) == rle
    np.testing.assert_array_equal(rle_decode(rle), mask)


def _set(mask: np.ndarray, r: int, c: int) -> np.ndarray:
    mask = mask.copy()
    mask[r, c] = 1
    return mask


@pytest.mark.parametrize(
    ("rle", "fault"),
    [
        ("1 2 3", "odd number of values"),
        ("1 x", "not an integer"),
        ("1.5 2", "not an integer"),
        ("0 5", "start 0 is less than 1"),
        ("5 0", "length 0 is less than 1"),
        ("-3 2", "less than 1"),
        ("+3 2", "not a plain unsigned integer"),
        ("409600 2", "past the last pixel"),
        ("99999999999999999999 1", "past the last pixel"),
        ("10 5 12 3", "overlapping"),
        ("10 5 3 2", "unsorted"),
    ],
)
def test_malformed_rle_names_the_fault(rle: str, fault: str) -> None:
    with pytest.raises(RLEError, match=fault):
        rle_decode(rle)


def test_touching_runs_decode_and_encode_canonically() -> None:
    assert rle_encode(rle_decode("1 3 4 2", (4, 3))) == "1 5"


def test_encode_rejects_non_binary_masks() -> None:
    with pytest.raises(RLEError, match="0 or 1"):
        rle_encode(np.full((2, 2), 3))
    with pytest.raises(RLEError, match="2-D"):
        rle_encode(np.zeros(4))


def test_parse_runs_is_zero_based() -> None:
    starts, lengths = parse_runs("3 2 10 1", (4, 4))
    assert starts.tolist() == [2, 9] and lengths.tolist() == [2, 1]


def test_every_official_mask_round_trips() -> None:
    """All official Severstal masks decode inside 256x1600 and re-encode to the same string."""
    frame = pd.read_csv(shared_path("severstal-official", "train.csv"))
    assert len(frame) > 1000
    for rle in frame["EncodedPixels"]:
        mask = rle_decode(rle)
        assert mask.shape == (256, 1600) and mask.any()
        assert rle_encode(mask) == rle


@settings(max_examples=50)
@given(st.text(max_size=30))
def test_decode_never_fails_with_anything_but_rle_error(text: str) -> None:
    """Arbitrary text either decodes to a valid mask or raises RLEError, never another exception."""
    try:
        mask = rle_decode(text, (8, 8))
    except RLEError:
        return
    assert mask.shape == (8, 8) and set(np.unique(mask)) <= {0, 1}
