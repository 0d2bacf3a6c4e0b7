"""Synthetic Severstal-format generator: determinism, file format, masks that mark the drawn defects, mix."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from steelqc.tasks.config import DEFAULT_CLASS_NAMES
from steelqc.tasks.data.rle import rle_decode
from steelqc.tasks.data.synth import DEFAULT_MIX, generate_dataset, image_ids, parse_mix, render_image

SMALL = (64, 400)
FULL = (256, 1600)
ID_PATTERN = re.compile(r"^[0-9a-f]{9}\.jpg$")
PRIORITY = [1, 2, 3, 4]


def read_rows(out: Path) -> tuple[list[str], list[tuple[str, int, str]]]:
    """Header and rows of OUT/train.csv."""
    with (out / "train.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [(r[0], int(r[1]), r[2]) for r in reader]
    return header, rows


def classes_by_image(rows: list[tuple[str, int, str]]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = defaultdict(set)
    for image, cid, _ in rows:
        found[image].add(cid)
    return found


def labels_from_csv(out: Path, priority: list[int]) -> Counter[str]:
    """Single labels recounted from the files: first class present in priority order, 'ok' without rows."""
    _, rows = read_rows(out)
    found = classes_by_image(rows)
    counts: Counter[str] = Counter()
    for path in (out / "train_images").glob("*.jpg"):
        present = found.get(path.name, set())
        label = next((c for c in priority if c in present), 0)
        counts[DEFAULT_CLASS_NAMES[label]] += 1
    return counts


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation with a 3x3 square, ``steps`` times (numpy only)."""
    out = mask.astype(bool)
    for _ in range(steps):
        padded = np.pad(out, 1)
        grown = np.zeros_like(out)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                grown |= padded[dy : dy + out.shape[0], dx : dx + out.shape[1]]
        out = grown
    return out


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", 8, seed=5, shape=FULL, multi_defect_rate=0.5)
    b = generate_dataset(tmp_path / "b", 8, seed=5, shape=FULL, multi_defect_rate=0.5)
    assert a["by_class"] == b["by_class"]
    assert (tmp_path / "a/train.csv").read_bytes() == (tmp_path / "b/train.csv").read_bytes()
    names_a = sorted(p.name for p in (tmp_path / "a/train_images").iterdir())
    names_b = sorted(p.name for p in (tmp_path / "b/train_images").iterdir())
    assert names_a == names_b and len(names_a) == 8
    for name in names_a:
        assert (tmp_path / "a/train_images" / name).read_bytes() == (tmp_path / "b/train_images" / name).read_bytes(), (
            name
        )


def test_different_seed_gives_different_files(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", 6, seed=1, shape=SMALL)
    generate_dataset(tmp_path / "b", 6, seed=2, shape=SMALL)
    images_a = {p.read_bytes() for p in (tmp_path / "a/train_images").iterdir()}
    images_b = {p.read_bytes() for p in (tmp_path / "b/train_images").iterdir()}
    assert not images_a & images_b
    names_a = {p.name for p in (tmp_path / "a/train_images").iterdir()}
    names_b = {p.name for p in (tmp_path / "b/train_images").iterdir()}
    assert not names_a & names_b


def test_image_depends_only_on_seed_and_index(tmp_path: Path) -> None:
    """The first 5 images of a 12-image set equal a 5-image set: no state leaks between images."""
    generate_dataset(tmp_path / "long", 12, seed=9, shape=SMALL, multi_defect_rate=0.5)
    generate_dataset(tmp_path / "short", 5, seed=9, shape=SMALL, multi_defect_rate=0.5)
    short_ids = image_ids(9, 5)
    assert image_ids(9, 12)[:5] == short_ids
    for name in short_ids:
        assert (tmp_path / "long/train_images" / name).read_bytes() == (
            tmp_path / "short/train_images" / name
        ).read_bytes()
    _, long_rows = read_rows(tmp_path / "long")
    _, short_rows = read_rows(tmp_path / "short")
    assert [r for r in long_rows if r[0] in set(short_ids)] == short_rows


# ------------------------------------------------------------------------------------------ file format


def test_files_are_severstal_format(full_set: tuple[Path, dict[str, Any]]) -> None:
    out, summary = full_set
    header, rows = read_rows(out)
    assert header == ["ImageId", "ClassId", "EncodedPixels"]
    assert (out / "train.csv").read_text().startswith("ImageId,ClassId,EncodedPixels\n")
    files = sorted((out / "train_images").iterdir())
    names = [p.name for p in files]
    assert len(names) == 40 == summary["n_images"]
    assert all(ID_PATTERN.match(n) for n in names), names
    assert sorted(image_ids(3, 40)) == names  # unique ids derived from (seed, index)
    for path in files:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (1600, 256)
    keys = [(image, cid) for image, cid, _ in rows]
    assert len(keys) == len(set(keys)), "one row per (image, class)"
    assert {cid for _, cid, _ in rows} <= {1, 2, 3, 4}
    assert {image for image, _, _ in rows} <= set(names)
    imaged_with_rows = {image for image, _, _ in rows}
    assert len(names) - len(imaged_with_rows) == summary["by_class"]["ok"]  # OK images have no row
    assert summary["by_class"]["ok"] > 0 and len(rows) > len(imaged_with_rows)  # some OK, some multi-defect


def test_summary_matches_files(full_set: tuple[Path, dict[str, Any]]) -> None:
    out, summary = full_set
    _, rows = read_rows(out)
    assert set(summary) >= {"out", "train_csv", "n_images", "by_class", "masks_by_class", "seconds"}
    assert summary["train_csv"] == str(out / "train.csv") and summary["out"] == str(out)
    assert summary["images_per_second"] > 0
    assert dict(labels_from_csv(out, PRIORITY)) == {k: v for k, v in summary["by_class"].items() if v}
    per_class = Counter(DEFAULT_CLASS_NAMES[cid] for _, cid, _ in rows)
    assert dict(per_class) == {k: v for k, v in summary["masks_by_class"].items() if v}


# ---------------------------------------------------------------------------------------------- masks


def test_every_rle_decodes_to_a_non_empty_mask(full_set: tuple[Path, dict[str, Any]]) -> None:
    out, _ = full_set
    _, rows = read_rows(out)
    assert rows
    for image, cid, rle in rows:
        mask = rle_decode(rle, FULL)  # raises RLEError when a run leaves the shape
        assert mask.shape == FULL and mask.sum() > 0, (image, cid)


def test_masked_pixels_stand_out_from_their_surroundings(full_set: tuple[Path, dict[str, Any]]) -> None:
    """In the JPEG files, masked pixels differ clearly from a ring of unmasked pixels just around the mask."""
    out, _ = full_set
    _, rows = read_rows(out)
    found = classes_by_image(rows)
    all_masks = {(image, cid): rle_decode(rle, FULL).astype(bool) for image, cid, rle in rows}
    for (image, cid), mask in all_masks.items():
        img = np.asarray(Image.open(out / "train_images" / image), dtype=np.float64)
        any_defect = np.zeros(FULL, dtype=bool)
        for other in found[image]:
            any_defect |= all_masks[(image, other)]
        ring = dilate(mask, 6) & ~dilate(any_defect, 1)
        assert ring.sum() > 50
        inside, around = img[mask].mean(), img[ring].mean()
        assert abs(inside - around) / around > 0.04, (image, cid, inside, around)


@pytest.mark.parametrize("cid", [1, 2, 3, 4])
def test_mask_is_exactly_what_the_defect_changed(cid: int) -> None:
    """Same generator state with and without the defect: pixels differ only inside the mask, and nearly all do.

    render_image draws the background first, so the same seed without classes gives the defect-free frame.
    """
    for seed in range(6):
        clean, none = render_image(np.random.default_rng([seed, 1]), [], SMALL if seed % 2 else FULL)
        img, masks = render_image(np.random.default_rng([seed, 1]), [cid], clean.shape)
        assert none == {} and set(masks) == {cid}
        mask = masks[cid]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        changed = img != clean
        assert not (changed & (mask == 0)).any(), "pixels changed outside the mask"
        assert changed[mask == 1].mean() > 0.9, "mask marks pixels that were not drawn"


def test_defects_survive_dimming_and_brightening() -> None:
    """Defects are relative changes: the masked contrast keeps its size when the frame is scaled."""
    img, masks = render_image(np.random.default_rng([4, 4]), [1], FULL)
    mask = masks[1].astype(bool)
    ring = dilate(mask, 6) & ~dilate(mask, 1)
    for gain in (0.6, 1.0, 1.4):
        scaled = np.clip(img.astype(np.float64) * gain, 0, 255)
        assert abs(scaled[mask].mean() - scaled[ring].mean()) / scaled[ring].mean() > 0.1


def test_render_image_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="class ids"):
        render_image(rng, [5])
    with pytest.raises(ValueError, match="too small"):
        render_image(rng, [1], (16, 64))


# ------------------------------------------------------------------------------------------- label mix


def test_label_mix_follows_the_requested_shares(tmp_path: Path) -> None:
    mix = {0: 0.4, 1: 0.25, 2: 0.05, 3: 0.2, 4: 0.1}
    n = 400
    summary = generate_dataset(tmp_path / "mix", n, seed=11, mix=mix, shape=SMALL, multi_defect_rate=0.2)
    counts = summary["by_class"]
    assert sum(counts.values()) == n
    for cid, share in mix.items():
        expected, sd = n * share, (n * share * (1 - share)) ** 0.5
        assert abs(counts[DEFAULT_CLASS_NAMES[cid]] - expected) < 4 * sd, (cid, counts)
    assert dict(labels_from_csv(tmp_path / "mix", PRIORITY)) == {k: v for k, v in counts.items() if v}
    _, rows = read_rows(tmp_path / "mix")
    multi = sum(len(c) == 2 for c in classes_by_image(rows).values())
    defects = n - counts["ok"]
    assert abs(multi - 0.2 * defects) < 4 * (defects * 0.2 * 0.8) ** 0.5 + 1, multi
    assert all(len(c) <= 2 for c in classes_by_image(rows).values())


def test_default_mix_is_severstal_like(tmp_path: Path) -> None:
    assert DEFAULT_MIX == {0: 0.47, 1: 0.09, 2: 0.04, 3: 0.32, 4: 0.08}
    summary = generate_dataset(tmp_path / "d", 60, seed=2, shape=SMALL)
    counts = summary["by_class"]
    assert set(counts) == set(DEFAULT_CLASS_NAMES.values())
    assert counts["ok"] > counts["dent"] > counts["scratch"]


def test_second_defect_has_lower_priority_and_a_positive_share(tmp_path: Path) -> None:
    """Priority [4, 3, 2, 1]: label-4 images get class 1 as second defect, label-1 images get none."""
    priority = [4, 3, 2, 1]
    summary = generate_dataset(
        tmp_path / "p",
        40,
        seed=1,
        mix={1: 0.5, 4: 0.5},
        shape=SMALL,
        multi_defect_rate=1.0,
        label_priority=priority,
    )
    _, rows = read_rows(tmp_path / "p")
    found = classes_by_image(rows)
    assert len(found) == 40  # no OK images in this mix
    assert all(c in ({1}, {1, 4}) for c in found.values()), found
    assert summary["by_class"]["other"] == sum(c == {1, 4} for c in found.values()) > 0
    assert summary["by_class"]["crack"] == sum(c == {1} for c in found.values()) > 0
    assert dict(labels_from_csv(tmp_path / "p", priority)) == {k: v for k, v in summary["by_class"].items() if v}


def test_class_with_zero_share_never_appears(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "z", 30, seed=4, mix={0: 0.5, 3: 0.5}, shape=SMALL, multi_defect_rate=1.0)
    _, rows = read_rows(tmp_path / "z")
    assert rows and {cid for _, cid, _ in rows} == {3}


def test_custom_class_names_key_the_summary(tmp_path: Path) -> None:
    names = {0: "good", 1: "c1", 2: "c2", 3: "c3", 4: "c4"}
    summary = generate_dataset(tmp_path / "n", 10, seed=1, shape=SMALL, class_names=names)
    assert set(summary["by_class"]) == set(names.values())
    assert set(summary["masks_by_class"]) == {"c1", "c2", "c3", "c4"}


# ------------------------------------------------------------------------------------------- parse_mix


def test_parse_mix_good_input() -> None:
    assert parse_mix("0=0.5,1=0.2,2=0.1,3=0.1,4=0.1") == pytest.approx({0: 0.5, 1: 0.2, 2: 0.1, 3: 0.1, 4: 0.1})
    assert parse_mix(" 0 = 1 , 3=1 ") == {0: 0.5, 3: 0.5}
    assert sum(parse_mix("1=3,2=1").values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("0=0.5,1", "ID=SHARE"),
        ("0=0.5,,1=0.5", "ID=SHARE"),
        ("x=1", "not an integer"),
        ("0=abc", "not a number"),
        ("7=0.1", "unknown class id 7"),
        ("0=-1,1=2", ">= 0"),
        ("0=nan", "finite"),
        ("0=0,1=0", "sum to 0"),
        ("0=0.5,0=0.5", "twice"),
    ],
)
def test_parse_mix_bad_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


# ------------------------------------------------------------------------------------ arguments and out


def test_refuses_to_overwrite_an_existing_data_set(tmp_path: Path) -> None:
    out = tmp_path / "o"
    generate_dataset(out, 3, seed=1, shape=SMALL)
    before = (out / "train.csv").read_bytes()
    with pytest.raises(ValueError, match="already holds a data set"):
        generate_dataset(out, 2, seed=2, shape=SMALL)
    assert (out / "train.csv").read_bytes() == before
    assert len(list((out / "train_images").iterdir())) == 3

    generate_dataset(out, 2, seed=2, shape=SMALL, overwrite=True)
    assert sorted(p.name for p in (out / "train_images").iterdir()) == sorted(image_ids(2, 2))  # no stale files


def test_refuses_images_left_without_a_csv(tmp_path: Path) -> None:
    """Stale images would silently count as defect-free: refuse them too."""
    (tmp_path / "o/train_images").mkdir(parents=True)
    (tmp_path / "o/train_images/abc.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="already holds a data set"):
        generate_dataset(tmp_path / "o", 2, seed=1, shape=SMALL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_images": -1},
        {"seed": -3},
        {"shape": (8, 8)},
        {"multi_defect_rate": 1.5},
        {"jpeg_quality": 0},
        {"mix": {9: 1.0}},
        {"label_priority": [1, 1, 2, 3, 4]},
        {"label_priority": [1, 2]},
        {"class_names": {0: "ok", 1: "crack"}},
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"n_images": 2, "seed": 1, "shape": SMALL, **kwargs}
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "bad", **args)
    assert not (tmp_path / "bad" / "train.csv").exists()
