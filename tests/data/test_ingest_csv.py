"""Ingest and the labels file (issue 8, items 2, 3, 5 and 6): a crack is never silently filed as OK.

Rows are matched to files after normalising the name (case, Unicode form, path prefix, white space...); a row that
matches only after normalising quarantines the file. Old-format groups must be complete. The CSV is parsed with
the csv module over the file (quoted line breaks, Unicode separators), and a valid full-size RLE is read whatever
its length.
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import IngestError, ingest, max_rle_chars
from steelqc.tasks.data.rle import rle_encode

TINY = {"image_height": 8, "image_width": 16}
NEW = "ImageId,ClassId,EncodedPixels\n"
OLD = "ImageId_ClassId,EncodedPixels\n"


def tiny_settings(**kwargs) -> Settings:
    return Settings(**TINY, **kwargs)


def make_set(root: Path, names: list[str], text: str, shape: tuple[int, int] = (8, 16)) -> Path:
    """A Severstal-layout data set: ``names`` as grey JPEGs of ``shape`` in train_images/ and ``text`` as CSV."""
    images = root / "train_images"
    images.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        pixels = np.random.default_rng(i).integers(60, 200, size=shape, dtype=np.uint8)
        Image.fromarray(pixels, "L").save(images / name, "JPEG")
    (root / "train.csv").write_bytes(text.encode("utf-8"))
    return root


def outcome(result) -> tuple[dict[str, str], dict[str, str]]:
    """(image_id -> classes of the manifest, image_id -> reasons joined) of an ingest result."""
    manifest = dict(zip(result.manifest["image_id"], result.manifest["classes"], strict=True))
    reasons: dict[str, str] = {}
    for q in result.quarantine:
        if q.image_id:
            reasons[q.image_id] = (reasons.get(q.image_id, "") + " | " + q.reason).strip(" |")
    return manifest, reasons


# ------------------------------------------------------------------------------- item 2: names


NFC_NAME = unicodedata.normalize("NFC", "défaut.jpg")
NFD_NAME = unicodedata.normalize("NFD", "défaut.jpg")


@pytest.mark.parametrize(
    ("on_disk", "row_id", "difference"),
    [
        ("002fc4e19.JPG", "002fc4e19.jpg", "letter case"),
        ("a.jpg", "/data/steel/train_images/a.jpg", "path prefix"),
        ("a.jpg", "train_images/a.jpg", "path prefix"),
        ("a.jpg", "C:\\data\\train_images\\a.jpg", "path prefix"),
        ("a.jpg", " a.jpg", "surrounding white space"),
        ("a.jpg", "a.jpg\u00a0", "surrounding white space"),
        (NFC_NAME, NFD_NAME, "Unicode form"),
        (NFD_NAME, NFC_NAME, "Unicode form"),
        ("a1.jpg", "ａ１.jpg", "Unicode form"),  # fullwidth letters (NFKC)
        ("a.jpg", "a\u200b.jpg", "invisible character"),
        ("a.jpg", "a", "extension"),
        ("a.jpg", "a.png", "extension"),
        ("a.jpg", "a.jpg_1", "ClassId suffix"),
    ],
)
def test_a_row_matching_a_file_only_after_normalising_quarantines_it(
    tmp_path: Path, on_disk: str, row_id: str, difference: str
) -> None:
    root = make_set(tmp_path / "d", [on_disk, "other.jpg"], f'{NEW}"{row_id}",1,1 5\nother.jpg,3,1 5\n')
    manifest, reasons = outcome(ingest(root, tiny_settings()))
    assert on_disk not in manifest, f"{on_disk!r} labelled {manifest.get(on_disk)!r} from a row naming {row_id!r}"
    assert repr(on_disk) in reasons[on_disk] and repr(row_id) in reasons[on_disk], reasons[on_disk]
    assert difference in reasons[on_disk]
    assert manifest == {"other.jpg": "3"}


def test_an_exact_row_and_a_differently_spelled_row_quarantine_the_file(tmp_path: Path) -> None:
    root = make_set(tmp_path / "d", ["a.jpg"], f"{NEW}a.jpg,3,1 5\nA.JPG,1,20 5\n")
    manifest, reasons = outcome(ingest(root, tiny_settings()))
    assert manifest == {} and "'A.JPG'" in reasons["a.jpg"] and "row 3" in reasons["a.jpg"]


def test_a_row_for_no_file_at_all_is_still_a_missing_image(tmp_path: Path) -> None:
    root = make_set(tmp_path / "d", ["a.jpg"], f"{NEW}b.jpg,1,1 5\n")
    result = ingest(root, tiny_settings())
    manifest, reasons = outcome(result)
    assert manifest == {"a.jpg": ""} and reasons == {"b.jpg": "missing image: file not found"}


@pytest.mark.parametrize("row_id", ["../a.jpg", "train_images/../a.jpg", "/abs/a.jpg", "..\\a.jpg", "sub/A.JPG"])
def test_an_unsafe_row_quarantines_the_file_its_name_points_at(tmp_path: Path, row_id: str) -> None:
    root = make_set(tmp_path / "d", ["a.jpg", "b.jpg"], f'{NEW}"{row_id}",1,1 5\n')
    result = ingest(root, tiny_settings())
    manifest, reasons = outcome(result)
    assert manifest == {"b.jpg": ""}
    assert "path separator" in reasons[row_id] and repr(row_id) in reasons["a.jpg"]


@pytest.mark.parametrize(
    ("header", "rows", "names"),
    [
        (NEW, "a.jpg,1\n", ["a.jpg"]),  # too few fields
        (NEW, "a.jpg,1,1 5,9\n", ["a.jpg"]),  # too many fields
        (NEW, "a.jpg,x,1 5\n", ["a.jpg"]),  # ClassId not an integer
        (NEW, "a.jpg,7,1 5\n", ["a.jpg"]),  # ClassId not configured
        (NEW, "a.jpg,1,1 500\n", ["a.jpg"]),  # past the last pixel
        (NEW, "a.jpg,1,\n", ["a.jpg"]),  # empty RLE in the new format
        (NEW, "a.jpg,1,1 5\na.jpg,1,9 5\n", ["a.jpg"]),  # conflicting rows
        (NEW, "A.JPG,1,1 500\n", ["a.jpg"]),  # a bad row under another spelling
        (OLD, "a.jpg,1 5\na.jpg_2,\na.jpg_3,\na.jpg_4,\n", ["a.jpg"]),  # no '_ClassId'
        (NEW, "a.jpg,1,1 5\u2028b.jpg,3,20 5\n", ["a.jpg", "b.jpg"]),  # two rows glued by U+2028
        (NEW, "a.jpg,1,1 5,b.jpg,3,20 5\n", ["a.jpg", "b.jpg"]),  # two rows glued without a line break
    ],
)
def test_every_row_level_fault_keeps_its_image_out_of_the_manifest(
    tmp_path: Path, header: str, rows: str, names: list[str]
) -> None:
    root = make_set(tmp_path / "d", [*names, "ok.jpg"], header + rows + ("" if header == NEW else _old_ok("ok.jpg")))
    manifest, reasons = outcome(ingest(root, tiny_settings()))
    assert manifest == {"ok.jpg": ""}
    for name in names:
        assert name in reasons


def _old_ok(name: str) -> str:
    return "".join(f"{name}_{c},\n" for c in (1, 2, 3, 4))


# ------------------------------------------------------------------------ item 3: old-format groups


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ("c.jpg_2,1 5\nc.jpg_3,\nc.jpg_4,\n", "missing ClassId 1"),
        ("c.jpg_1,1 5\nc.jpg_2,\nc.jpg_2,\nc.jpg_3,\nc.jpg_4,\n", "repeated ClassId 2"),
        ("c.jpg_1,1 5\nc.jpg_2,20 5\nc.jpg_2,20 5\nc.jpg_3,\nc.jpg_4,\n", "repeated ClassId 2"),
        ("c.jpg_1,1 5\nc.jpg_2,\nc.jpg_3,\nc.jpg_4,\nc.jpg_5,\n", "ClassId 5 is not a configured defect class"),
        ("c.jpg_1,\nc.jpg_2,\nc.jpg_3,\n", "missing ClassId 4"),
    ],
)
def test_an_incomplete_old_format_group_quarantines_its_image(tmp_path: Path, rows: str, fragment: str) -> None:
    root = make_set(tmp_path / "d", ["c.jpg", "ok.jpg"], OLD + rows + _old_ok("ok.jpg"))
    manifest, reasons = outcome(ingest(root, tiny_settings()))
    assert manifest == {"ok.jpg": ""}
    assert fragment in reasons["c.jpg"], reasons


def test_old_format_group_size_follows_the_configured_classes(tmp_path: Path) -> None:
    three = {0: "ok", 1: "crack", 2: "scratch", 3: "dent"}
    rows = "a.jpg_1,1 5\na.jpg_2,\na.jpg_3,\nb.jpg_1,\nb.jpg_2,\nb.jpg_3,\nb.jpg_4,\n"
    root = make_set(tmp_path / "d", ["a.jpg", "b.jpg"], OLD + rows)
    manifest, reasons = outcome(ingest(root, tiny_settings(class_names=three)))
    assert manifest == {"a.jpg": "1"}
    assert "ClassId 4 is not a configured defect class" in reasons["b.jpg"]


# ---------------------------------------------------------------------------- item 5: CSV parsing


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_quoted_rle_holding_line_breaks_is_one_field_and_lines_are_file_lines(tmp_path: Path, newline: str) -> None:
    text = NEW + 'a.jpg,1,"1 5\n20 5\n40 5"\nb.jpg,3,3 3\nbad.jpg,9,1 5\n'
    root = make_set(tmp_path / "d", ["a.jpg", "b.jpg", "bad.jpg"], text.replace("\n", newline))
    result = ingest(root, tiny_settings())
    assert outcome(result)[0] == {"a.jpg": "1", "b.jpg": "3"}
    masks = result.masks.set_index("image_id")
    assert masks.loc["a.jpg", "encoded_pixels"] == "1 5 20 5 40 5"
    assert result.manifest.set_index("image_id").loc["a.jpg", "pixels_crack"] == 15
    (bad,) = [q for q in result.quarantine if q.image_id == "bad.jpg"]
    assert bad.row == 6  # header 1, a.jpg 2-4, b.jpg 5, bad.jpg 6
    assert result.rows_read == 3


def test_a_multi_line_record_reports_the_line_where_it_starts(tmp_path: Path) -> None:
    text = NEW + 'a.jpg,1,"1 5\n20 5\n40 5"\nb.jpg,9,"3 3\n9 9"\nc.jpg,1,"1 1\n\n3 1"\nd.jpg,1,1 1 2\n'
    root = make_set(tmp_path / "d", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], text)
    result = ingest(root, tiny_settings())
    rows = {q.image_id: q.row for q in result.quarantine}
    assert rows == {"b.jpg": 5, "d.jpg": 10}
    assert outcome(result)[0] == {"a.jpg": "1", "c.jpg": "1"}


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c"])
def test_unicode_line_separators_do_not_split_rows(tmp_path: Path, sep: str) -> None:
    text = f"{NEW}a.jpg,1,1 5{sep}b.jpg,3,20 5\nc.jpg,2,1 1\n"
    root = make_set(tmp_path / "d", ["a.jpg", "b.jpg", "c.jpg"], text)
    result = ingest(root, tiny_settings())
    manifest, reasons = outcome(result)
    assert manifest == {"c.jpg": "2"}  # a and b: one malformed record; neither may be labelled
    assert "malformed row" in reasons["a.jpg"] and f"U+{ord(sep):04X}" in reasons["a.jpg"] and "b.jpg" in reasons
    assert result.rows_read == 2
    assert {q.row for q in result.quarantine if q.image_id in ("a.jpg", "b.jpg")} == {2}


@pytest.mark.parametrize(
    "text",
    [
        NEW + 'a.jpg,1,"1 5\nb.jpg,3,20 5\nc.jpg,2,1 1\n',  # unbalanced quote swallowing rows
        NEW + 'a.jpg,1,1 5\n"b.jpg\nc.jpg",2,1 1\n',  # line break inside an ImageId
        NEW + 'a.jpg,1,1 5\nb.jpg,1,"1 5\nc.jpg"\n',  # a line break in an EncodedPixels that is not numbers
    ],
)
def test_an_unbalanced_quote_is_a_whole_file_error_naming_the_line(tmp_path: Path, text: str) -> None:
    root = make_set(tmp_path / "d", ["a.jpg", "b.jpg", "c.jpg"], text)
    with pytest.raises(IngestError, match="line break") as info:
        ingest(root, tiny_settings())
    assert info.value.file.endswith("train.csv") and info.value.row in (2, 3)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    root = make_set(tmp_path / "d", ["a.jpg"], "")
    (root / "train.csv").write_bytes(b"ImageId,ClassId,EncodedPixels\r\na.jpg,1,1 5\r\nb\xff.jpg,1,1 5\r\n")
    with pytest.raises(IngestError, match="not UTF-8") as info:
        ingest(root, tiny_settings())
    assert info.value.row == 3


# -------------------------------------------------------------------------- item 6: long fields


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (2, 5), (3, 4), (4, 3)])
def test_max_rle_chars_is_the_longest_canonical_rle(shape: tuple[int, int]) -> None:
    n = shape[0] * shape[1]
    longest = 0
    for bits in range(1 << n):
        mask = np.array([(bits >> i) & 1 for i in range(n)], dtype=np.uint8).reshape(shape[1], shape[0]).T
        longest = max(longest, len(rle_encode(mask)))
    assert max_rle_chars(shape) == longest


def test_max_rle_chars_of_a_severstal_mask() -> None:
    every_other = np.zeros(256 * 1600, dtype=np.uint8)
    every_other[1::2] = 1
    rle = rle_encode(every_other.reshape(1600, 256).T)
    assert max_rle_chars((256, 1600)) == len(rle) == 1_787_649


def _every_other_pixel_rle(shape: tuple[int, int]) -> str:
    n = shape[0] * shape[1]
    return " ".join(f"{s} 1" for s in range(2, n + 1, 2))


def test_a_valid_full_size_rle_longer_than_the_csv_default_is_read(tmp_path: Path) -> None:
    shape = (256, 1600)
    rle = _every_other_pixel_rle(shape)
    assert len(rle) > 131_072
    root = make_set(tmp_path / "d", ["long.jpg", "b.jpg"], f"{NEW}long.jpg,1,{rle}\nb.jpg,3,1 5\n", shape)
    result = ingest(root, Settings())
    manifest, reasons = outcome(result)
    assert manifest == {"long.jpg": "1", "b.jpg": "3"} and reasons == {}
    assert result.manifest.set_index("image_id").loc["long.jpg", "pixels_crack"] == 256 * 1600 // 2
    assert csv.field_size_limit() >= max_rle_chars(shape)


def test_a_field_over_the_limit_quarantines_its_image(tmp_path: Path) -> None:
    shape = (256, 1600)
    padded = "1" + " " * (max_rle_chars(shape) + 10) + "5"  # valid numbers, but longer than any valid mask needs
    root = make_set(tmp_path / "d", ["long.jpg", "b.jpg"], f"{NEW}long.jpg,1,{padded}\nb.jpg,3,1 5\n", shape)
    result = ingest(root, Settings())
    manifest, reasons = outcome(result)
    assert manifest == {"b.jpg": "3"}
    assert "longer than" in reasons["long.jpg"]
    assert [q.row for q in result.quarantine] == [2]


def test_a_tiny_shape_does_not_lower_the_csv_limit(tmp_path: Path) -> None:
    root = make_set(tmp_path / "d", ["a.jpg"], f"{NEW}a.jpg,1,1 5\n")
    ingest(root, tiny_settings())
    assert csv.field_size_limit() >= 131_072


def test_a_too_long_rle_for_a_tiny_shape_is_quarantined(tmp_path: Path) -> None:
    padded = (
        "1 " + "0" * max_rle_chars((8, 16)) + "5"
    )  # leading zeros: numerically valid, longer than any 8x16 mask needs
    root = make_set(tmp_path / "d", ["a.jpg", "b.jpg"], f"{NEW}a.jpg,1,{padded}\nb.jpg,1,1 5\n")
    manifest, reasons = outcome(ingest(root, tiny_settings()))
    assert manifest == {"b.jpg": "1"} and "longer than" in reasons["a.jpg"]


def test_an_image_with_no_row_in_the_old_format_is_not_ok(tmp_path: Path) -> None:
    # The old format lists OK images too (four empty rows): an image with no row at all has no known label.
    root = make_set(tmp_path / "d", ["listed.jpg", "unlisted.jpg"], OLD + _old_ok("listed.jpg"))
    manifest, reasons = outcome(ingest(root, tiny_settings()))
    assert manifest == {"listed.jpg": ""} and "not listed in train.csv" in reasons["unlisted.jpg"]


def test_a_multi_line_field_over_the_limit_is_a_whole_file_error(tmp_path: Path) -> None:
    shape = (256, 1600)
    spread = "1 1\n" * (max_rle_chars(shape) // 4 + 10)  # a quoted field over the limit, across many lines
    root = make_set(tmp_path / "d", ["a.jpg"], f'{NEW}b.jpg,3,1 5\na.jpg,1,"{spread}"\n', shape)
    with pytest.raises(IngestError, match="starting on line 3 cannot be read") as info:
        ingest(root, Settings())
    assert info.value.file.endswith("train.csv") and info.value.row == 3


def test_files_whose_names_normalise_the_same_are_ambiguous_for_a_row(tmp_path: Path) -> None:
    # a.jpg has its exact row; A.JPG matches that row only after normalising: the row may have meant it.
    root = make_set(tmp_path / "d", ["a.jpg", "A.JPG", "a.png"], f"{NEW}a.jpg,1,1 5\n")
    manifest, reasons = outcome(ingest(root, tiny_settings()))
    assert manifest == {"a.jpg": "1", "a.png": ""}  # another extension is another image when the row is exact
    assert "'a.jpg' (letter case)" in reasons["A.JPG"]
