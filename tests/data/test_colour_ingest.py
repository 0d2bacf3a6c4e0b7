"""Ingest decides per data set whether it is colour (issue 11, item 4) and records it in the manifest.

The rule (tasks/data/ingest.py, README "Data"): an image's chroma is the 99th percentile of its per-pixel channel
spread ``max(R, G, B) - min(R, G, B)``; the image is colour above 8 grey levels; a data set is colour when at
least 5 % of its valid images are.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import (
    COLOUR_IMAGE_SHARE,
    COLOUR_SPREAD_LEVELS,
    check_image,
    dataset_channels,
    ingest,
    load_manifest,
    write_outputs,
)
from tests.colour_data import CRITICAL, make_colour_pairs, texture, tinted
from tests.helpers import shared_path

SHAPE = (48, 64)


def grey_texture(seed: int) -> np.ndarray:
    return texture(np.random.default_rng(seed), SHAPE)


def save_rgb(path: Path, rgb: np.ndarray, fmt: str = "PNG", **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(path, fmt, **options)
    return path


def grey_folders(root: Path, per_class: int = 10) -> Path:
    """Two classes of grey textures stored as 3-channel JPEGs (the way NEU-CLS and Severstal ship them)."""
    for c, name in enumerate(("crack", "scale")):
        for i in range(per_class):
            grey = grey_texture(100 * c + i)
            save_rgb(root / name / f"{name}{i}.jpg", np.repeat(grey[..., None], 3, axis=2), "JPEG", quality=75)
    return root


def test_grey_images_stored_as_rgb_jpeg_stay_grey(tmp_path: Path) -> None:
    grey = np.repeat(grey_texture(0)[..., None], 3, axis=2)
    grey[10:12] = 255  # hard edges: where chroma subsampling would show if it invented colour
    grey[:, 30:32] = 0
    off_balance = np.clip(grey.astype(np.int16) + np.array([4, 0, -3]), 0, 255).astype(np.uint8)
    encodings = {
        "pil_q30_420.jpg": lambda p: save_rgb(p, grey, "JPEG", quality=30, subsampling=2),
        "pil_q95_444.jpg": lambda p: save_rgb(p, grey, "JPEG", quality=95, subsampling=0),
        "cv2_q50.jpg": lambda p: p.write_bytes(cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes()),
        "white_balance_off.png": lambda p: save_rgb(p, off_balance),  # a grey camera's slight cast: still grey
    }
    for name, write in encodings.items():
        write(tmp_path / name)
        info = check_image(tmp_path / name, None, 10**8)
        assert info.chroma <= COLOUR_SPREAD_LEVELS, (name, info.chroma)

    result = ingest(grey_folders(tmp_path / "set"), Settings(), critical_class="crack")
    assert result.channels == 1 and result.colour_images() == 0
    assert set(result.manifest["channels"]) == {1}


def test_a_colour_set_is_colour_and_says_so_in_manifest_and_summary(tmp_path: Path) -> None:
    make_colour_pairs(tmp_path / "set", 6)
    result = ingest(tmp_path / "set", Settings(), critical_class=CRITICAL)
    assert result.channels == 3 and result.colour_images() == 12
    assert set(result.manifest["channels"]) == {3} and (result.manifest["chroma"] > COLOUR_SPREAD_LEVELS).all()
    assert not any("read as grey" in note for note in result.manifest["note"])
    summary = write_outputs(result, tmp_path / "out")
    assert summary["channels"] == 3 and summary["colour_images"] == 12
    assert json.loads((tmp_path / "out" / "ingest.json").read_text())["channels"] == 3
    manifest = load_manifest(summary["manifest"])
    assert set(manifest["channels"]) == {3}
    assert list(manifest.columns)[:9] == [
        "image_id", "path", "classes", "label", "label_name", "height", "width", "channels", "chroma",
    ]  # fmt: skip


def test_a_colour_jpeg_is_colour(tmp_path: Path) -> None:
    rgb = tinted(grey_texture(1), (40, -20, 0))
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, "JPEG", quality=75)
    path = tmp_path / "rust.jpg"
    path.write_bytes(buffer.getvalue())
    assert check_image(path, None, 10**8).chroma > COLOUR_SPREAD_LEVELS


def test_a_colour_patch_counts_a_few_stray_pixels_do_not(tmp_path: Path) -> None:
    grey = np.repeat(grey_texture(2)[..., None], 3, axis=2)
    patch, speck = grey.copy(), grey.copy()
    patch[:2, :, 0] = np.minimum(patch[:2, :, 0].astype(int) + 40, 255)  # 2 rows of 48: 4 % of the pixels
    speck[0, :12, 0] = 255 - speck[0, :12, 0]  # 12 pixels of 3072: 0.4 %
    assert check_image(save_rgb(tmp_path / "patch.png", patch), None, 10**8).chroma > COLOUR_SPREAD_LEVELS
    assert check_image(save_rgb(tmp_path / "speck.png", speck), None, 10**8).chroma == 0


def test_data_set_rule_needs_a_share_of_colour_images() -> None:
    grey, colour = 0.0, COLOUR_SPREAD_LEVELS + 1
    assert dataset_channels([]) == 1
    assert dataset_channels([grey] * 100) == 1
    assert dataset_channels([colour] + [grey] * 99) == 1  # 1 %: stray files
    assert dataset_channels([colour] * 5 + [grey] * 95) == 3  # 5 %: e.g. one coloured defect class
    assert dataset_channels([colour]) == 3
    assert COLOUR_IMAGE_SHARE == 0.05


def test_stray_colour_images_in_a_grey_set_are_noted_and_read_as_grey(tmp_path: Path) -> None:
    root = grey_folders(tmp_path / "set", per_class=25)  # 50 images
    save_rgb(root / "scale" / "stray.png", tinted(grey_texture(7), (40, -20, 0)))  # 1 of 51: under 5 %
    result = ingest(root, Settings(), critical_class="crack")
    assert result.channels == 1 and result.colour_images() == 1
    notes = result.manifest.set_index("image_id")["note"]
    assert "colour image (channel spread" in notes["scale/stray.png"] and "read as grey" in notes["scale/stray.png"]
    assert (notes.drop("scale/stray.png") == "").all()

    for i in range(2):  # two more: 3 colour images of 53 (5.7 %) reach the share, and the set is colour
        save_rgb(root / "crack" / f"red{i}.png", tinted(grey_texture(8 + i), (40, -20, 0)))
    assert ingest(root, Settings(), critical_class="crack").channels == 3


@pytest.mark.parametrize(
    ("folder", "critical"), [("severstal-sample", None), ("neu-cls", "crazing")], ids=["severstal", "neu-cls"]
)
def test_real_grey_data_sets_stay_grey(folder: str, critical: str | None) -> None:
    result = ingest(shared_path(folder), Settings(), critical_class=critical)
    assert len(result.manifest) > 40
    assert result.channels == 1 and result.colour_images() == 0
    assert result.manifest["chroma"].max() <= 2  # 3-channel JPEGs/PNGs of grey steel: equal channels
