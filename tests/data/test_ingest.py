"""Ingest: each kind of bad input is quarantined with its reason, nothing valid is dropped, fatal faults raise."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import (
    ImageFault,
    IngestError,
    check_image,
    dataset_fingerprint,
    ingest,
    load_manifest,
    write_outputs,
)
from tests.helpers import H, W, make_folders, shared_path, write_csv, write_image

# What ingest makes of the `messy` data set (tests/helpers.py, make_messy).
EXPECTED_VALID = {"ok1.jpg", "ok2.jpg", "crack.jpg", "multi.jpg", "dent.jpg", "dup.jpg", "png_inside.jpg"}
EXPECTED_REASONS = {
    "missing.jpg": "missing image",
    "badrle.jpg": "malformed RLE for ClassId 3: odd number of values",
    "cls9.jpg": "ClassId 9 is not a configured defect class",
    "clsx.jpg": "ClassId 'two' is not an integer",
    "conflict.jpg": "conflicting rows for ClassId 2: rows 13 and 14 differ",
    "../escape.jpg": "holds a path separator",
    "sub/inner.jpg": "holds a path separator",
    "small.jpg": "wrong size 100x100 (width x height), expected 1600x256",
    "truncated.jpg": "truncated",
    "garbage.jpg": "not a readable image",
    "empty.jpg": "empty file (0 bytes)",
    "bomb.jpg": "decompression bomb",
    "short.jpg": "malformed row: expected 3 fields, found 2",
    "dup.jpg": "duplicate row: same ClassId 3 and RLE as row 6",
}


def test_every_fault_is_quarantined_with_its_reason_and_nothing_valid_is_lost(messy: Path, tmp_path: Path) -> None:
    result = ingest(messy, Settings())
    assert set(result.manifest["image_id"]) == EXPECTED_VALID
    reasons = {q.image_id: (q.reason, q.row, q.file) for q in result.quarantine}
    for image_id, fragment in EXPECTED_REASONS.items():
        assert image_id in reasons, f"{image_id} not quarantined"
        assert fragment in reasons[image_id][0], (image_id, reasons[image_id])
    assert reasons["badrle.jpg"][1] == 10 and reasons["badrle.jpg"][2].endswith("train.csv")
    assert reasons["missing.jpg"][2].endswith("train_images/missing.jpg")
    assert len(result.quarantine) == len(EXPECTED_REASONS)

    summary = write_outputs(result, tmp_path / "out")
    assert summary["valid"] == len(EXPECTED_VALID)
    assert summary["quarantined"] == len(EXPECTED_REASONS)
    quarantine = pd.read_csv(summary["quarantine"])
    assert list(quarantine.columns) == ["file", "row", "image_id", "reason"]
    assert len(quarantine) == len(EXPECTED_REASONS)
    assert summary["by_class"] == {"ok": 2, "crack": 2, "scratch": 0, "dent": 2, "other": 1}


def test_manifest_holds_labels_pixels_sizes_and_hashes(messy: Path, tmp_path: Path) -> None:
    summary = write_outputs(ingest(messy, Settings()), tmp_path / "out")
    manifest = load_manifest(summary["manifest"]).set_index("image_id")
    multi = manifest.loc["multi.jpg"]
    assert multi["classes"] == "1 3" and multi["label"] == 1 and multi["label_name"] == "crack"
    assert (multi["pixels_crack"], multi["pixels_dent"], multi["pixels_other"]) == (10, 50, 0)
    assert manifest.loc["ok1.jpg", "classes"] == "" and manifest.loc["ok1.jpg", "label"] == 0
    assert manifest.loc["png_inside.jpg", "format"] == "PNG"
    assert "extension .jpg" in manifest.loc["png_inside.jpg", "note"]
    assert (manifest["height"] == H).all() and (manifest["width"] == W).all()
    assert manifest["sha256"].str.len().eq(64).all()
    masks = pd.read_csv(summary["masks"])
    assert len(masks[masks["image_id"] == "dup.jpg"]) == 1


def test_label_priority_decides_the_single_label(messy: Path) -> None:
    result = ingest(messy, Settings(critical_class="dent"))
    assert result.manifest.set_index("image_id").loc["multi.jpg", "label"] == 3


def test_old_format_with_four_rows_per_image(tmp_path: Path) -> None:
    root = tmp_path / "old"
    for name in ["a.jpg", "b.jpg"]:
        write_image(root / "train_images" / name)
    rows = ["ImageId_ClassId,EncodedPixels"]
    rows += [f"a.jpg_{c}," for c in (1, 2, 3, 4)]
    rows += ["b.jpg_1,", "b.jpg_2,7 3", "b.jpg_3,", "b.jpg_4,100 4"]
    write_csv(root, "\n".join(rows) + "\n")
    result = ingest(root, Settings())
    manifest = result.manifest.set_index("image_id")
    assert manifest.loc["a.jpg", "label"] == 0 and manifest.loc["b.jpg", "classes"] == "2 4"
    assert manifest.loc["b.jpg", "label"] == 2 and result.quarantine == []


def test_header_only_csv_means_every_image_is_ok(tmp_path: Path) -> None:
    root = tmp_path / "allok"
    for name in ["a.jpg", "b.jpg", "c.jpg"]:
        write_image(root / "train_images" / name)
    write_csv(root, "ImageId,ClassId,EncodedPixels\n")
    result = ingest(root, Settings())
    assert result.by_class()["ok"] == 3 and result.quarantine == []


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("", "file is empty \\(0 bytes\\)"),
        ("image,class,pixels\na.jpg,1,1 2\n", "unexpected header"),
        ("ImageId,ClassId\n", "unexpected header"),
    ],
)
def test_unreadable_csv_is_a_clear_error(tmp_path: Path, text: str, fault: str) -> None:
    root = tmp_path / "bad"
    write_image(root / "train_images" / "a.jpg")
    write_csv(root, text)
    with pytest.raises(IngestError, match=fault) as info:
        ingest(root, Settings())
    assert info.value.file.endswith("train.csv") and info.value.row == 1


def test_fingerprint_is_stable_and_sensitive(messy: Path) -> None:
    first, second = ingest(messy, Settings()), ingest(messy, Settings())
    assert first.fingerprint == second.fingerprint
    changed = first.manifest.copy()
    changed.loc[0, "label"] = 4
    assert dataset_fingerprint(changed, first.class_names) != first.fingerprint
    assert dataset_fingerprint(first.manifest.iloc[::-1], first.class_names) == first.fingerprint


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.png", shape=(1200, 1000), fmt="PNG")
    with pytest.raises(ImageFault, match="over the limit of 1000000"):
        check_image(path, None, max_pixels=1_000_000)
    assert check_image(path, None, max_pixels=2_000_000).width == 1000


# ------------------------------------------------------------------------------------------ folders


def test_folder_layout_classes_and_faults(tmp_path: Path) -> None:
    result = ingest(make_folders(tmp_path / "plant"), Settings())
    assert result.format == "folders"
    assert result.class_names == {0: "ok", 1: "crack", 2: "rust"}
    assert result.critical_class == "crack"
    assert result.by_class() == {"ok": 2, "crack": 2, "rust": 1}
    reasons = {Path(q.file).name: q.reason for q in result.quarantine}
    assert "not an image extension" in reasons["notes.txt"]
    assert "not a readable image" in reasons["broken.jpg"] or "truncated" in reasons["broken.jpg"]
    assert "outside any class folder" in reasons["readme.md"]


def test_folder_layout_critical_class_must_exist(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "plant")
    assert ingest(root, Settings(), critical_class="rust").critical_class == "rust"
    with pytest.raises(IngestError, match="'scratch' is not among the defect classes found: crack, rust"):
        ingest(root, Settings(), critical_class="scratch")


def test_unknown_layout_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.jpg").write_bytes(b"")
    with pytest.raises(IngestError, match="cannot tell the layout"):
        ingest(tmp_path / "flat", Settings())


# ------------------------------------------------------------------------------------------ real data


def test_real_severstal_sample_is_all_valid() -> None:
    result = ingest(shared_path("severstal-sample"), Settings())
    assert len(result.manifest) == 47 and result.quarantine == []
    assert result.by_class() == {"ok": 5, "crack": 9, "scratch": 1, "dent": 29, "other": 3}
    assert result.masks["class_id"].value_counts().to_dict() == {3: 29, 1: 9, 2: 4, 4: 4}
    assert (result.manifest["format"] == "PNG").sum() == 20


def test_real_neu_cls_folders() -> None:
    result = ingest(shared_path("neu-cls"), Settings(), critical_class="crazing")
    assert len(result.manifest) == 1800 and result.quarantine == []
    assert set(result.by_class().values()) == {300}


def test_official_labels_without_images_quarantine_every_image(tmp_path: Path) -> None:
    source = shared_path("severstal-official", "train.csv")
    root = tmp_path / "labels-only"
    root.mkdir()
    (root / "train.csv").write_bytes(source.read_bytes())
    result = ingest(root, Settings())
    assert result.manifest.empty
    n_images = pd.read_csv(source)["ImageId"].nunique()
    assert len(result.quarantine) == n_images
    assert all(q.reason == "missing image: file not found" for q in result.quarantine)
