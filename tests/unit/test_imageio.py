"""The one decoder (issue 8, item 4): every mode ingest accepts decodes to the right grey pixels, others are refused;
(issue 11, item 4) with ``channels=3`` to the right RGB pixels, grey modes replicated.

Each test writes a small file in one Pillow mode from a known numpy array and checks the decoded pixels against
values computed here from that array (ITU-R 601-2 luminance, 16-bit scaling), not against Pillow's own conversion.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelqc.tasks.data.datasets import read_image
from steelqc.tasks.data.imageio import (
    SUPPORTED_MODES,
    NotRegularFile,
    UnsupportedImage,
    channel_spread,
    conversion_note,
    decode_image,
    image_to_array,
    unsupported_mode_reason,
)
from steelqc.tasks.data.imageio import luminance as luminance_of
from tests.helpers import alarm

H, W = 12, 20
RNG = np.random.default_rng(8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of an HxWx3 uint8 array, rounded (what Pillow's L holds, within 1)."""
    weights = np.array([0.299, 0.587, 0.114])
    return np.rint(rgb[..., :3].astype(np.float64) @ weights).astype(np.int64)


def scaled_16(values: np.ndarray) -> np.ndarray:
    """The documented 16-bit rule: round(v * 255 / 65535)."""
    return np.rint(values.astype(np.float64) * 255 / 65535).astype(np.int64)


def save(tmp_path: Path, image: Image.Image, fmt: str, name: str = "img") -> Path:
    path = tmp_path / f"{name}.{fmt.lower()}"
    image.save(path, fmt)
    return path


def assert_decodes(path: Path, mode: str, expected: np.ndarray, atol: int = 0) -> None:
    """The file opens in ``mode`` and decodes (via decode_image and datasets.read_image) to ``expected``."""
    with Image.open(path) as image:
        assert image.mode == mode, f"test file opened as {image.mode}, not {mode}"
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == expected.shape
    np.testing.assert_allclose(out.astype(np.int64), expected, atol=atol)
    np.testing.assert_array_equal(read_image(path), out)


def rgb_pixels() -> np.ndarray:
    return RNG.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def sixteen_bit_pixels() -> np.ndarray:
    """Edges (0, 128, 129, 257*k, 65535) and random values over the whole 16-bit range."""
    values = RNG.integers(0, 65536, size=(H, W)).astype(np.uint16)
    values.flat[:6] = [0, 128, 129, 257 * 7, 65534, 65535]
    return values


# ------------------------------------------------------------------------------------------ accepted modes


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_mode_L_is_kept_as_stored(tmp_path: Path, fmt: str) -> None:
    grey = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    assert_decodes(save(tmp_path, Image.fromarray(grey, "L"), fmt), "L", grey)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_mode_1_is_0_or_255(tmp_path: Path, fmt: str) -> None:
    bits = RNG.integers(0, 2, size=(H, W)).astype(bool)
    assert_decodes(save(tmp_path, Image.fromarray(bits), fmt), "1", bits.astype(np.int64) * 255)


def palette_image(alpha: bool = False) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A random-palette P image (PA with random alpha when ``alpha``), its palette and its index array."""
    palette = RNG.integers(0, 256, size=(256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    image = Image.fromarray(index, "L").convert("P")
    image.putpalette(palette.flatten().tolist())
    if alpha:
        image = image.convert("PA")
        image.putalpha(Image.fromarray(RNG.integers(0, 256, size=(H, W), dtype=np.uint8), "L"))
    return image, palette, index


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF"])
def test_mode_P_is_the_luminance_of_the_palette_colour(tmp_path: Path, fmt: str) -> None:
    image, palette, index = palette_image()
    assert_decodes(save(tmp_path, image, fmt), "P", luminance(palette[index]), atol=1)


def test_mode_P_with_a_transparent_entry_ignores_transparency(tmp_path: Path) -> None:
    image, palette, index = palette_image()
    image.info["transparency"] = int(index[0, 0])
    path = tmp_path / "t.png"
    image.save(path, transparency=int(index[0, 0]))
    assert_decodes(path, "P", luminance(palette[index]), atol=1)


def test_mode_PA_drops_alpha(tmp_path: Path) -> None:
    image, palette, index = palette_image(alpha=True)
    assert_decodes(save(tmp_path, image, "TIFF"), "PA", luminance(palette[index]), atol=1)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_mode_LA_drops_alpha(tmp_path: Path, fmt: str) -> None:
    grey = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    alpha = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(np.stack([grey, alpha], axis=-1), "LA"), fmt)
    assert_decodes(path, "LA", grey)
    with Image.open(path) as image:
        assert "alpha ignored" in conversion_note(image)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_mode_RGB_is_601_luminance(tmp_path: Path, fmt: str) -> None:
    rgb = rgb_pixels()
    assert_decodes(save(tmp_path, Image.fromarray(rgb, "RGB"), fmt), "RGB", luminance(rgb), atol=1)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_mode_RGBA_drops_alpha(tmp_path: Path, fmt: str) -> None:
    rgba = RNG.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent: its colour still counts
    assert_decodes(save(tmp_path, Image.fromarray(rgba, "RGBA"), fmt), "RGBA", luminance(rgba), atol=1)


def test_mode_RGBA_fully_opaque_has_no_note() -> None:
    rgba = RNG.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert conversion_note(Image.fromarray(rgba, "RGBA")) == ""


def test_mode_RGBX_in_memory_is_luminance() -> None:
    rgb = rgb_pixels()
    image = Image.fromarray(rgb, "RGB").convert("RGBX")
    assert image.mode == "RGBX"
    np.testing.assert_allclose(image_to_array(image).astype(np.int64), luminance(rgb), atol=1)


def cmyk_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Random CMYK pixels and the RGB Pillow makes of them (top half: no black; bottom half: black only)."""
    cmyk = RNG.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    cmyk[: H // 2, :, 3] = 0  # top: no black, so RGB = 255 - CMY
    cmyk[H // 2 :, :, :3] = 0  # bottom: black only, so R = G = B = 255 - K
    rgb = np.empty((H, W, 3), dtype=np.int64)
    rgb[: H // 2] = 255 - cmyk[: H // 2, :, :3].astype(np.int64)
    rgb[H // 2 :] = (255 - cmyk[H // 2 :, :, 3:4].astype(np.int64)).repeat(3, axis=-1)
    return cmyk, rgb


def test_mode_CMYK_goes_through_RGB(tmp_path: Path) -> None:
    cmyk, rgb = cmyk_pixels()
    assert_decodes(save(tmp_path, Image.fromarray(cmyk, "CMYK"), "TIFF"), "CMYK", luminance(rgb), atol=1)


def test_mode_YCbCr_is_its_Y_channel(tmp_path: Path) -> None:
    rgb = rgb_pixels()
    ycbcr = Image.fromarray(rgb, "RGB").convert("YCbCr")
    y = np.asarray(ycbcr)[..., 0].astype(np.int64)
    assert_decodes(save(tmp_path, ycbcr, "TIFF"), "YCbCr", y, atol=2)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    values = sixteen_bit_pixels()
    path = save(tmp_path, Image.fromarray(values), fmt)
    assert_decodes(path, "I;16", scaled_16(values))
    out = read_image(path)
    assert out.flat[:6].tolist() == [0, 0, 1, 7, 255, 255]  # 128/257 rounds down, 129/257 up, 257k -> k
    assert len(np.unique(out)) > 100  # not clipped to a few values (the old convert("L") gave all 255)


def test_16_bit_big_endian_tiff(tmp_path: Path) -> None:
    values = sixteen_bit_pixels()
    image = Image.frombytes("I;16B", (W, H), values.astype(">u2").tobytes())
    assert_decodes(save(tmp_path, image, "TIFF"), "I;16B", scaled_16(values))


@pytest.mark.parametrize(("mode", "dtype"), [("I;16L", "<u2"), ("I;16N", "=u2"), ("I;16B", ">u2")])
def test_16_bit_modes_in_memory(mode: str, dtype: str) -> None:
    values = sixteen_bit_pixels()
    image = Image.frombytes(mode, (W, H), values.astype(dtype).tobytes())
    np.testing.assert_array_equal(image_to_array(image).astype(np.int64), scaled_16(values))
    assert "largest value 65535" in conversion_note(image)


def test_8_bit_data_widened_to_16_bit_comes_back_exactly(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    np.testing.assert_array_equal(decode_image(path), grey)


def test_32_bit_integer_in_16_bit_range_is_scaled(tmp_path: Path) -> None:
    values = sixteen_bit_pixels().astype(np.int32)
    assert_decodes(save(tmp_path, Image.fromarray(values), "TIFF"), "I", scaled_16(values))


@pytest.mark.parametrize("bad", [-1, 70_000])
def test_32_bit_integer_outside_16_bit_range_is_refused(tmp_path: Path, bad: int) -> None:
    values = sixteen_bit_pixels().astype(np.int32)
    values[3, 3] = bad
    path = save(tmp_path, Image.fromarray(values), "TIFF")
    with pytest.raises(UnsupportedImage, match=r"mode I .*outside 0\.\.65535"):
        decode_image(path)


def test_decode_reads_by_content_and_from_a_file_object(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    path = tmp_path / "png_data.jpg"
    Image.fromarray(grey).save(path, "PNG")
    np.testing.assert_array_equal(decode_image(path), grey)
    np.testing.assert_array_equal(decode_image(io.BytesIO(path.read_bytes())), grey)
    np.testing.assert_array_equal(decode_image(str(path)), grey)


# ------------------------------------------------------------------------------------------ refused modes


def test_float_tiff_is_refused_naming_the_mode(tmp_path: Path) -> None:
    path = save(tmp_path, Image.fromarray(RNG.random((H, W)).astype(np.float32)), "TIFF")
    with pytest.raises(UnsupportedImage, match="unsupported pixel mode F"):
        decode_image(path)


def test_lab_tiff_is_refused_naming_the_mode(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("LAB", (W, H)), "TIFF")
    with pytest.raises(UnsupportedImage, match="unsupported pixel mode LAB"):
        decode_image(path)


def test_supported_modes_and_reasons_agree() -> None:
    for mode in SUPPORTED_MODES:
        assert unsupported_mode_reason(mode) is None
    for mode in ("F", "LAB", "HSV", "La", "RGBa", "I;16S", "XYZ"):
        reason = unsupported_mode_reason(mode)
        assert reason is not None and f"mode {mode} " in reason
    assert {"1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I;16B", "I;16L", "I", "CMYK", "YCbCr"} <= SUPPORTED_MODES
    assert "F" not in SUPPORTED_MODES


def test_channels_other_than_1_or_3_are_refused(tmp_path: Path) -> None:
    path = save(tmp_path, Image.fromarray(rgb_pixels(), "RGB"), "PNG")
    for bad in (0, 2, 4):
        with pytest.raises(ValueError, match=r"channels must be 1 .* or 3"):
            decode_image(path, channels=bad)


# ------------------------------------------------------------------------------------------ colour (channels=3)
# Expected RGB values are computed here from the array written (the palette colour, 255 - CMY, the 16-bit rule),
# never by asking Pillow for the same conversion.


def assert_decodes_rgb(path: Path, mode: str, expected: np.ndarray, atol: int = 0) -> None:
    """The file opens in ``mode``; channels=3 gives ``expected`` (HxWx3), and its luminance is channels=1's."""
    with Image.open(path) as image:
        assert image.mode == mode, f"test file opened as {image.mode}, not {mode}"
    out = decode_image(path, channels=3)
    assert out.dtype == np.uint8 and out.shape == (*expected.shape[:2], 3)
    np.testing.assert_allclose(out.astype(np.int64), expected, atol=atol)
    np.testing.assert_array_equal(read_image(path, channels=3), out)
    np.testing.assert_array_equal(luminance_of(out), decode_image(path, channels=1))


def replicated(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(grey, dtype=np.int64)[..., None], 3, axis=2)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_rgb_mode_RGB_is_as_stored(tmp_path: Path, fmt: str) -> None:
    rgb = rgb_pixels()
    assert_decodes_rgb(save(tmp_path, Image.fromarray(rgb, "RGB"), fmt), "RGB", rgb)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_rgb_grey_modes_are_replicated(tmp_path: Path, fmt: str) -> None:
    grey = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    assert_decodes_rgb(save(tmp_path, Image.fromarray(grey, "L"), fmt, "l"), "L", replicated(grey))
    bits = RNG.integers(0, 2, size=(H, W)).astype(bool)
    assert_decodes_rgb(save(tmp_path, Image.fromarray(bits), fmt, "one"), "1", replicated(bits * 255))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_rgb_mode_LA_is_grey_replicated_alpha_dropped(tmp_path: Path, fmt: str) -> None:
    grey = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    alpha = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(np.stack([grey, alpha], axis=-1), "LA"), fmt)
    assert_decodes_rgb(path, "LA", replicated(grey))


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF"])
def test_rgb_mode_P_is_the_palette_colour(tmp_path: Path, fmt: str) -> None:
    image, palette, index = palette_image()
    assert_decodes_rgb(save(tmp_path, image, fmt), "P", palette[index])


def test_rgb_mode_P_with_a_transparent_entry_keeps_its_colour(tmp_path: Path) -> None:
    image, palette, index = palette_image()
    path = tmp_path / "t.png"
    image.save(path, transparency=int(index[0, 0]))
    assert_decodes_rgb(path, "P", palette[index])


def test_rgb_mode_PA_is_the_palette_colour_alpha_dropped(tmp_path: Path) -> None:
    image, palette, index = palette_image(alpha=True)
    assert_decodes_rgb(save(tmp_path, image, "TIFF"), "PA", palette[index])


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_rgb_mode_RGBA_drops_alpha(tmp_path: Path, fmt: str) -> None:
    rgba = RNG.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent: its colour is kept, not composited onto a background
    assert_decodes_rgb(save(tmp_path, Image.fromarray(rgba, "RGBA"), fmt), "RGBA", rgba[..., :3])


def test_rgb_mode_RGBX_in_memory_drops_the_padding() -> None:
    rgb = rgb_pixels()
    image = Image.fromarray(rgb, "RGB").convert("RGBX")
    np.testing.assert_array_equal(image_to_array(image, channels=3), rgb)


def test_rgb_mode_CMYK_goes_through_RGB(tmp_path: Path) -> None:
    cmyk, rgb = cmyk_pixels()
    assert_decodes_rgb(save(tmp_path, Image.fromarray(cmyk, "CMYK"), "TIFF"), "CMYK", rgb)


def test_rgb_mode_YCbCr_comes_back_near_the_RGB_it_was_made_from(tmp_path: Path) -> None:
    rgb = rgb_pixels()
    rgb[:, : W // 2] = rgb[:, : W // 2, :1]  # a grey half: Cb = Cr = 128, back to equal channels
    path = save(tmp_path, Image.fromarray(rgb, "RGB").convert("YCbCr"), "TIFF")
    assert_decodes_rgb(path, "YCbCr", rgb, atol=3)  # YCbCr is 8-bit too: a round trip loses a level or two


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_rgb_16_bit_grey_is_scaled_then_replicated(tmp_path: Path, fmt: str) -> None:
    values = sixteen_bit_pixels()
    assert_decodes_rgb(save(tmp_path, Image.fromarray(values), fmt), "I;16", replicated(scaled_16(values)))
    ints = values.astype(np.int32)
    assert_decodes_rgb(save(tmp_path, Image.fromarray(ints), "TIFF", "i32"), "I", replicated(scaled_16(ints)))


def test_rgb_refuses_what_grey_refuses(tmp_path: Path) -> None:
    path = save(tmp_path, Image.fromarray(RNG.random((H, W)).astype(np.float32)), "TIFF")
    with pytest.raises(UnsupportedImage, match="unsupported pixel mode F"):
        decode_image(path, channels=3)
    values = sixteen_bit_pixels().astype(np.int32)
    values[0, 0] = 70_000
    with pytest.raises(UnsupportedImage, match=r"mode I .*outside 0\.\.65535"):
        decode_image(save(tmp_path, Image.fromarray(values), "TIFF", "big"), channels=3)


def test_rgb_reads_by_content_from_a_file_object(tmp_path: Path) -> None:
    rgb = rgb_pixels()
    path = tmp_path / "png_data.jpg"
    Image.fromarray(rgb).save(path, "PNG")
    np.testing.assert_array_equal(decode_image(io.BytesIO(path.read_bytes()), channels=3), rgb)


def test_luminance_is_pillows_grey_and_leaves_grey_alone() -> None:
    rgb = rgb_pixels()
    np.testing.assert_allclose(luminance_of(rgb).astype(np.int64), luminance(rgb), atol=1)
    np.testing.assert_array_equal(luminance_of(rgb), np.asarray(Image.fromarray(rgb, "RGB").convert("L")))
    grey = rgb[..., 0].copy()
    assert luminance_of(grey) is grey
    np.testing.assert_array_equal(luminance_of(grey[..., None]), grey)
    with pytest.raises(ValueError, match="uint8 HxW or HxWx3"):
        luminance_of(rgb.astype(np.float32))


def test_channel_spread_is_a_high_quantile_of_max_minus_min() -> None:
    grey = RNG.integers(0, 256, size=(100, 100), dtype=np.uint8)
    assert channel_spread(grey) == 0.0
    assert channel_spread(np.repeat(grey[..., None], 3, axis=2)) == 0.0
    tinted = np.repeat(grey[..., None], 3, axis=2).astype(np.int16)
    tinted[:2, :, 0] += 30  # 2 % of the pixels 30 levels redder (where that stays in range)
    tinted = tinted.clip(0, 255).astype(np.uint8)
    assert channel_spread(tinted) > 0  # more than 1 % of the pixels differ
    assert channel_spread(tinted, quantile=0.999) <= 30
    speck = np.repeat(grey[..., None], 3, axis=2)
    speck[0, :50, 1] = 255 - speck[0, :50, 1]  # 0.5 % of the pixels: below the 99th percentile
    assert channel_spread(speck) == 0.0


# ------------------------------------------------------------------------------------------ special files


def test_decode_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    with alarm(10), pytest.raises(NotRegularFile, match=r"named pipe \(FIFO\)"):
        decode_image(tmp_path / "pipe.png")


def test_decode_refuses_a_device(tmp_path: Path) -> None:
    os.symlink("/dev/zero", tmp_path / "zero.png")
    with alarm(10), pytest.raises(NotRegularFile, match="character device"):
        decode_image(tmp_path / "zero.png")
