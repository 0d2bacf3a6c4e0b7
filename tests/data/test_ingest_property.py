"""Property: whatever the spelling, quoting or completeness of ``train.csv``, a crack is never silently filed as OK.

Hypothesis builds tiny Severstal data sets (8x16 images) in either CSV format and perturbs them: file names on
disk and ImageIds in rows in another case, Unicode form (NFC/NFD), with a path prefix, white space or no
extension; rows dropped or repeated; every field quoted or only where needed; line breaks inside a quoted RLE;
CRLF line ends; the longest valid RLE and an over-long one. The invariant: every image on disk ends up either in
the manifest with exactly the classes its rows (spelled exactly as the file) give, or in the quarantine with a
reason; an image whose label is uncertain is never in the manifest; nothing but :class:`IngestError` is raised.
"""

from __future__ import annotations

import csv
import io
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import IngestError, ingest, max_rle_chars
from steelqc.tasks.data.rle import rle_encode

SHAPE = (8, 16)
N_PIXELS = SHAPE[0] * SHAPE[1]
CLASSES = (1, 2, 3, 4)
SETTINGS = {"image_height": SHAPE[0], "image_width": SHAPE[1]}
PREFIXES = ("im", "dé", "Ab", "Öl")  # accents make NFC and NFD spellings differ
EXTENSIONS = (".jpg", ".JPG", ".png", ".jpeg")
SPELLINGS = ("exact", "exact", "exact", "upper", "lower", "nfd", "nfc", "prefix", "abs", "windows", "space", "noext")


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(60, 200, size=SHAPE, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, "JPEG")
    return out.getvalue()


JPEGS = [_jpeg(seed) for seed in range(4)]
LONGEST_RLE = " ".join(f"{start} 1" for start in range(2, N_PIXELS + 1, 2))  # every other pixel: valid
assert len(LONGEST_RLE) == max_rle_chars(SHAPE)
TOO_LONG_RLE = "1 " + "0" * (max_rle_chars(SHAPE) + 1) + "1"  # valid numbers, longer than any mask needs


@dataclass(frozen=True)
class Row:
    """One generated CSV row: for which file, as which spelling, which class and RLE; ``bad``: must quarantine."""

    file: str
    written: str
    class_id: int
    rle: str
    bad: bool = False


def spell(name: str, how: str) -> str:
    """The file name as a row may write it."""
    stem, dot, _ = name.rpartition(".")
    return {
        "upper": name.upper(),
        "lower": name.lower(),
        "nfd": unicodedata.normalize("NFD", name),
        "nfc": unicodedata.normalize("NFC", name),
        "prefix": f"train_images/{name}",
        "abs": f"/data/severstal/train_images/{name}",
        "windows": f"C:\\severstal\\train_images\\{name}",
        "space": f" {name}",
        "noext": stem if dot else name,
    }.get(how, name)


@st.composite
def masks(draw: st.DrawFn) -> str:
    """A valid non-empty RLE of a tiny mask (now and then the longest one there is)."""
    if draw(st.integers(0, 9)) == 0:
        return LONGEST_RLE
    runs = draw(st.lists(st.tuples(st.integers(0, N_PIXELS - 1), st.integers(1, 6)), min_size=1, max_size=4))
    flat = np.zeros(N_PIXELS, dtype=np.uint8)
    for start, length in runs:
        flat[start : start + length] = 1
    return rle_encode(flat.reshape(SHAPE[1], SHAPE[0]).T)


@st.composite
def data_sets(draw: st.DrawFn) -> tuple[str, dict[str, int], list[Row], str]:
    """(format, file name -> image seed, rows in file order, CSV text)."""
    kind = draw(st.sampled_from(["new", "old"]))
    n_images = draw(st.integers(1, 4))
    files: dict[str, int] = {}
    for i in range(n_images):
        name = f"{draw(st.sampled_from(PREFIXES))}{i}{draw(st.sampled_from(EXTENSIONS))}"
        name = unicodedata.normalize(draw(st.sampled_from(["NFC", "NFD"])), name)
        files[name] = i
    rows: list[Row] = []
    for name in files:
        present = draw(st.sets(st.sampled_from(CLASSES)))
        how = draw(st.sampled_from(SPELLINGS))
        per_row = draw(st.booleans())  # one spelling for the image, or one drawn for each row
        for class_id in CLASSES:
            if kind == "new" and class_id not in present:
                continue
            rle = draw(masks()) if class_id in present else ""
            bad = class_id in present and draw(st.integers(0, 19)) == 0
            written = spell(name, draw(st.sampled_from(SPELLINGS)) if per_row else how)
            rows.append(Row(name, written, class_id, TOO_LONG_RLE if bad else rle, bad))
    rows += [Row("", f"gone{j}.jpg", 1, "1 5") for j in range(draw(st.integers(0, 2)))]  # rows for no file
    if rows and draw(st.booleans()):
        del rows[draw(st.integers(0, len(rows) - 1))]
    if rows and draw(st.booleans()):
        rows.insert(draw(st.integers(0, len(rows))), rows[draw(st.integers(0, len(rows) - 1))])
    rows = draw(st.permutations(rows)) if draw(st.booleans()) else rows
    return kind, files, rows, render(kind, rows, draw)


def render(kind: str, rows: list[Row], draw: st.DrawFn) -> str:
    """The CSV text: quoting, line ends and line breaks inside quoted RLEs drawn at random."""
    out = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    writer = csv.writer(out, quoting=quoting, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(["ImageId", "ClassId", "EncodedPixels"] if kind == "new" else ["ImageId_ClassId", "EncodedPixels"])
    for row in rows:
        rle = row.rle
        if " " in rle and draw(st.integers(0, 3)) == 0:  # a quoted RLE holding line breaks
            rle = rle.replace(" ", draw(st.sampled_from(["\n", "\r\n", " \n "])), draw(st.integers(1, 3)))
        if kind == "new":
            writer.writerow([row.written, row.class_id, rle])
        else:
            writer.writerow([f"{row.written}_{row.class_id}", rle])
    return out.getvalue()


def expected(kind: str, name: str, rows: list[Row]) -> tuple[bool, str]:
    """(must the file be quarantined, the classes its exactly spelled rows give)."""
    mine = [r for r in rows if r.file == name]
    exact = [r for r in mine if r.written == name]
    classes = " ".join(str(c) for c in sorted({r.class_id for r in exact if r.rle}))
    uncertain = any(r.written != name or r.bad for r in mine)
    if kind == "old":
        counts = [sum(r.class_id == c for r in exact) for c in CLASSES]
        uncertain = uncertain or counts != [1] * len(CLASSES)
    return uncertain, classes


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data_sets())
def test_every_image_is_labelled_exactly_by_its_rows_or_quarantined(case) -> None:
    kind, files, rows, text = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train_images").mkdir()
        for name, seed in files.items():
            (root / "train_images" / name).write_bytes(JPEGS[seed % len(JPEGS)])
        (root / "train.csv").write_bytes(text.encode("utf-8"))
        try:
            result = ingest(root, Settings(**SETTINGS))
        except IngestError as exc:  # only a whole-file fault, named
            assert exc.file and exc.file.endswith("train.csv") and exc.row is not None, exc
            raise AssertionError(f"no whole-file fault was generated, yet: {exc}") from exc
    manifest = dict(zip(result.manifest["image_id"], result.manifest["classes"], strict=True))
    quarantined = {q.image_id for q in result.quarantine if not q.reason.startswith("duplicate row")}
    assert all(q.reason for q in result.quarantine)
    for name in files:
        uncertain, classes = expected(kind, name, rows)
        assert (name in manifest) != (name in quarantined), (name, manifest, result.quarantine)
        if uncertain:
            assert name in quarantined, f"{name!r} labelled {manifest.get(name)!r}; rows: {rows}"
        else:
            assert manifest.get(name) == classes, (name, classes, manifest, result.quarantine)
    assert set(manifest) <= set(files)
