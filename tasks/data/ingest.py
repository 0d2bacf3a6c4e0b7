"""Ingest: validate a raw data set and build the manifest, the quarantine list and the fingerprint.

Two layouts are read:

* **Severstal**: ``DIR/train.csv`` (Kaggle's new ``ImageId,ClassId,EncodedPixels`` or the old
  ``ImageId_ClassId,EncodedPixels`` with four rows per image) and images in ``DIR/train_images/``.
  An image with no defect row is an OK image.
* **Folders**: ``DIR/<class>/*.{jpg,jpeg,png,bmp}``; a folder named ``ok`` means no defect.

Faults in a row or an image put that image in quarantine with a reason; everything else goes on. Faults that
make the whole data set unreadable (an empty CSV, a wrong header, an unknown critical class) raise
:class:`IngestError`.

**Colour or grey** (per data set, recorded in the manifest's ``channels`` column and ``ingest.json``): each image's
``chroma`` is :func:`~steelqc.tasks.data.imageio.channel_spread`, the 99th percentile over its pixels of
``max(R, G, B) - min(R, G, B)`` in grey levels (0 for grey modes). An image is colour when its chroma exceeds
:data:`COLOUR_SPREAD_LEVELS` (8): more than 1 % of its pixels differ between channels by more than 8 grey levels
(3 % of the range). A grey image stored as RGB, JPEG included, stays far below that (libjpeg gives exactly equal
channels back: NEU-CLS and the Severstal sample measure 0), while a colour patch on 1 % of the image is enough.
A data set is colour (``channels`` 3) when at least :data:`COLOUR_IMAGE_SHARE` (5 %) of its valid images are
colour: enough for a colour camera whose only coloured images are one defect class, not enough for a few stray
colour files in a grey set to turn it (those are noted in the manifest: they are read as grey).
"""

from __future__ import annotations

import codecs
import csv
import errno
import hashlib
import io
import json
import logging
import os
import re
import stat
import threading
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from PIL import Image, UnidentifiedImageError

from steelqc.tasks.config import DEFAULT_MAX_CSV_BYTES, DEFAULT_MAX_IMAGE_BYTES, Settings
from steelqc.tasks.data.imageio import (
    COLOUR_MODES,
    NotRegularFile,
    UnsupportedImage,
    channel_spread,
    conversion_note,
    file_kind,
    image_to_array,
    read_regular_file,
    unsupported_mode_reason,
)
from steelqc.tasks.data.rle import RLEError, parse_runs, rle_pixel_count

log = logging.getLogger(__name__)

Format = Literal["auto", "severstal", "folders"]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp"}
NEW_HEADER = ["ImageId", "ClassId", "EncodedPixels"]
OLD_HEADER = ["ImageId_ClassId", "EncodedPixels"]
QUARANTINE_COLUMNS = ["file", "row", "image_id", "reason"]
OS_LITTER = {".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", ".gitkeep", ".gitignore", ".keep"}
"""File names (lower case) that operating systems and tools leave in folders: skipped, logged at debug."""
OS_LITTER_FOLDERS = {
    ".git",
    ".trashes",
    ".spotlight-v100",
    ".fseventsd",
    ".temporaryitems",
    ".appledouble",
    ".ipynb_checkpoints",
    "__macosx",
}
"""Folder names (lower case) of the same kind; ``._*`` AppleDouble files are litter too."""
COLOUR_SPREAD_LEVELS = 8.0
"""An image is colour when its chroma (99th percentile of the per-pixel channel spread) exceeds this (grey levels)."""
COLOUR_IMAGE_SHARE = 0.05
"""A data set is colour when at least this share of its valid images are colour."""


class IngestError(Exception):
    """The data set as a whole cannot be read; names the file and, where known, the row."""

    def __init__(self, message: str, file: Path | str | None = None, row: int | None = None):
        self.message, self.file, self.row = message, (str(file) if file else None), row
        where = f"{self.file}" + (f", row {row}" if row is not None else "") if self.file else ""
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class Quarantined:
    """One rejected image or CSV row, with the reason."""

    file: str
    row: int | None
    image_id: str | None
    reason: str


@dataclass(frozen=True)
class ImageInfo:
    height: int
    width: int
    format: str
    sha256: str
    note: str = ""
    """Read through a symlink, 16-bit scaling, ignored alpha (joined into the manifest's note column)."""
    chroma: float = 0.0
    """The image's channel spread in grey levels (:func:`~steelqc.tasks.data.imageio.channel_spread`)."""


class ImageFault(Exception):
    """An image file that cannot be used; the message is the quarantine reason."""


@dataclass
class IngestResult:
    """What ingest found: valid images (manifest), masks, quarantine records and the label space."""

    source: Path
    format: str
    class_names: dict[int, str]
    critical_class: str
    manifest: pd.DataFrame
    masks: pd.DataFrame
    quarantine: list[Quarantined] = field(default_factory=list)
    rows_read: int = 0
    sources: dict[str, dict] = field(default_factory=dict)
    """Each data source by name: ``path``, ``format``, ``quarantined`` (README "Data", several sources)."""
    replaced_by_review: list[dict] = field(default_factory=list)
    """Rows of other sources dropped for the same image in the ``reviewed`` source (``tasks/data/sources.py``):
    ``image_id``, ``source``, ``sha256``, ``from`` (their label), ``to`` (the reviewed one), ``reviewed_image_id``."""

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.manifest, self.class_names)

    def by_class(self) -> dict[str, int]:
        counts = Counter(self.manifest["label"].tolist()) if len(self.manifest) else Counter()
        return {name: int(counts.get(cid, 0)) for cid, name in sorted(self.class_names.items())}

    @property
    def channels(self) -> int:
        """1 (grey) or 3 (colour): how the data set's images are fed to a model (:func:`dataset_channels`)."""
        return dataset_channels(self.manifest["chroma"]) if "chroma" in self.manifest else 1

    def colour_images(self) -> int:
        """How many valid images are colour (:func:`is_colour_image`)."""
        return sum(map(is_colour_image, self.manifest["chroma"])) if "chroma" in self.manifest else 0


def is_colour_image(chroma: float) -> bool:
    """An image is colour when its chroma exceeds :data:`COLOUR_SPREAD_LEVELS` grey levels."""
    return float(chroma) > COLOUR_SPREAD_LEVELS


def dataset_channels(chromas: Iterable[float]) -> int:
    """3 when at least :data:`COLOUR_IMAGE_SHARE` of the images are colour (and one is), else 1 (grey)."""
    flags = [is_colour_image(c) for c in chromas]
    return 3 if flags and any(flags) and sum(flags) >= COLOUR_IMAGE_SHARE * len(flags) else 1


def with_channels(result: IngestResult) -> IngestResult:
    """The result with the data set's ``channels`` in every manifest row, and a note on each colour image of a
    data set read as grey (it loses its colour, so the manifest says so)."""
    channels, manifest = result.channels, result.manifest.copy()
    manifest["channels"] = channels
    if channels == 1 and len(manifest):
        colour = manifest["chroma"].map(is_colour_image)
        note = manifest.loc[colour, "chroma"].map(
            lambda c: f"colour image (channel spread {c:g} grey levels) in a grey data set: read as grey"
        )
        manifest.loc[colour, "note"] = [
            "; ".join(n for n in (old, new) if n) for old, new in zip(manifest.loc[colour, "note"], note, strict=True)
        ]
    columns = list(manifest.columns)
    columns.insert(columns.index("chroma"), columns.pop(columns.index("channels")))
    return replace(result, manifest=manifest[columns])


# ----------------------------------------------------------------------------------------------- images


def check_image(
    path: Path, expected_shape: tuple[int, int] | None, max_pixels: int, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> ImageInfo:
    """Hash and fully decode one image; raise :class:`ImageFault` with the reason when it is unusable.

    Nothing but a regular file (or a symlink to one) is opened: ``lstat`` comes first, so a FIFO, socket,
    device, folder, dangling symlink or symlink loop is refused unread, and so is a file over ``max_bytes``.
    (Whether a symlink stays inside the data folder is :func:`scan_dir`'s check.) The format is read from the
    content, never from the extension; the pixels are decoded by :func:`tasks.imageio.image_to_array`, the
    decoder training and inference use, so a mode it cannot convert is refused here. ``expected_shape`` is
    (height, width).
    """
    entry = inspect_path(path)
    if entry.kind != "file":
        raise ImageFault(entry.reason)
    if entry.size > max_bytes:
        raise ImageFault(f"file is {entry.size} bytes, over max_image_bytes ({max_bytes}): refused unread")
    try:
        data = read_regular_file(path, max_bytes)
    except NotRegularFile as exc:  # swapped for something else since the lstat
        raise ImageFault(str(exc)) from None
    except OSError as exc:
        raise ImageFault(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageFault(f"file grew over max_image_bytes ({max_bytes}) while being read: refused")
    if not data:
        raise ImageFault("empty file (0 bytes)")
    height, width, fmt, note, chroma = _decode_checked(io.BytesIO(data), expected_shape, max_pixels)
    notes = "; ".join(n for n in (entry.note, note) if n)
    sha256 = hashlib.sha256(data).hexdigest()
    return ImageInfo(height=height, width=width, format=fmt, sha256=sha256, note=notes, chroma=chroma)


def _decode_checked(
    data: io.BytesIO, expected_shape: tuple[int, int] | None, max_pixels: int
) -> tuple[int, int, str, str, float]:
    """(height, width, format, conversion note, chroma) of image bytes, checked before and by a full decode
    (in RGB for a mode that can hold colour, so its channel spread is measured on the pixels a model would get)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageFault(
                        f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                        "(possible decompression bomb); refused without decoding"
                    )
                if expected_shape is not None and (height, width) != tuple(expected_shape):
                    raise ImageFault(
                        f"wrong size {width}x{height} (width x height), expected "
                        f"{expected_shape[1]}x{expected_shape[0]}"
                    )
                if reason := unsupported_mode_reason(image.mode):
                    raise ImageFault(reason)
                fmt = image.format or "unknown"
                chroma = channel_spread(image_to_array(image, 3 if image.mode in COLOUR_MODES else 1))
                note = conversion_note(image)
    except ImageFault:
        raise
    except UnsupportedImage as exc:
        raise ImageFault(str(exc)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageFault(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageFault("not a readable image (content matches no known image format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageFault(f"unreadable or truncated image: {exc}") from None
    return height, width, fmt, note, chroma


def _check_images(
    paths: dict[str, Path], expected_shape: tuple[int, int] | None, settings: Settings
) -> tuple[dict[str, ImageInfo], dict[str, str]]:
    """Check many images in a thread pool (decoding releases the GIL). Returns (infos, faults)."""
    ids = list(paths)

    def one(image_id: str) -> ImageInfo | str:
        try:
            return check_image(paths[image_id], expected_shape, settings.max_image_pixels, settings.max_image_bytes)
        except ImageFault as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, settings.io_workers)) as pool:
        results = list(pool.map(one, ids))
    infos = {i: r for i, r in zip(ids, results, strict=True) if isinstance(r, ImageInfo)}
    faults = {i: r for i, r in zip(ids, results, strict=True) if isinstance(r, str)}
    return infos, faults


def _extension_note(path: Path, fmt: str) -> str:
    """A note when the extension does not match the content (kept: the content decides)."""
    ext = path.suffix.lower().lstrip(".")
    expected = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP"}.get(ext)
    if expected and expected != fmt:
        return f"content is {fmt}, extension .{ext}"
    return ""


# ------------------------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class PathEntry:
    """What one path is, found without opening it: a usable ``file``, a ``folder``, or ``refused`` (why)."""

    kind: Literal["file", "folder", "refused"]
    reason: str = ""
    note: str = ""
    size: int = 0


def _is_inside(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def inspect_path(path: Path, roots: Iterable[Path] = ()) -> PathEntry:
    """Classify ``path`` with ``lstat`` (and ``stat`` through a symlink); nothing is opened.

    A symlink is a ``file`` only when it resolves to a regular file inside one of ``roots`` (any, when no roots
    are given), and is noted; a symlink loop, a dangling symlink, one leading outside the roots, to a folder or
    to a special file is ``refused``, as is a FIFO, socket or device.
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        return PathEntry("refused", f"cannot inspect: {exc.strerror or exc}")
    if stat.S_ISREG(st.st_mode):
        return PathEntry("file", size=st.st_size)
    if stat.S_ISDIR(st.st_mode):
        return PathEntry("folder", "folder: not a regular file, not read")
    if not stat.S_ISLNK(st.st_mode):
        return PathEntry("refused", f"{file_kind(st.st_mode)}: not a regular file, not read")
    target = os.readlink(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return PathEntry("refused", f"symlink loop (through {target!r}): not read")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return PathEntry("refused", f"dangling symlink to {target!r}: the target does not exist")
        return PathEntry("refused", f"symlink to {target!r} cannot be followed: {exc.strerror or exc}")
    resolved = os.path.realpath(path)
    if roots and not _is_inside(resolved, [os.path.realpath(r) for r in roots]):
        return PathEntry("refused", f"symlink to {target!r} resolves outside the data folder ({resolved}): not read")
    if stat.S_ISDIR(st.st_mode):
        return PathEntry("refused", f"symlink to a folder ({target!r}): not followed, not read")
    if not stat.S_ISREG(st.st_mode):
        return PathEntry("refused", f"symlink to a {file_kind(st.st_mode)} ({target!r}): not read")
    return PathEntry("file", note=f"symlink to {target}", size=st.st_size)


def is_os_litter(name: str, is_folder: bool) -> bool:
    """Files and folders operating systems leave behind (``.DS_Store``, ``._*``, ``Thumbs.db``, ``__MACOSX``...)."""
    return name.startswith("._") or name.lower() in (OS_LITTER_FOLDERS if is_folder else OS_LITTER)


@dataclass
class Scan:
    """One folder's entries: usable files and real sub-folders by name, and what was refused (with why)."""

    files: dict[str, Path] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    quarantine: list[Quarantined] = field(default_factory=list)


def scan_dir(path: Path, root: Path, id_prefix: str | None = "") -> Scan:
    """Sort the entries of ``path`` (one level, by name) into files, folders and quarantine, opening nothing.

    Files are regular files and symlinks to regular files inside the data folder ``root`` (or inside ``path``
    itself, e.g. a ``train_images`` that links elsewhere). Folders are real folders (a symlinked folder is not
    followed). Refused: every other symlink and special file, and hidden entries (they would otherwise vanish
    silently; renaming them includes them). OS litter is skipped, logged at debug. Quarantine records carry
    ``image_id = id_prefix + name`` (no image id when ``id_prefix`` is None). A missing ``path`` scans empty.
    """
    scan = Scan()
    roots = (root, path)
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        log.warning("cannot list %s: %s", path, exc.strerror or exc)
        return scan
    for entry in entries:
        item = Path(entry.path)
        image_id = None if id_prefix is None else f"{id_prefix}{entry.name}"
        lstat_folder = entry.is_dir(follow_symlinks=False)
        if is_os_litter(entry.name, lstat_folder):
            log.debug("skipping OS litter %s", item)
            continue
        if entry.name.startswith("."):
            what = "hidden folder: not scanned" if lstat_folder else "hidden file: not used"
            scan.quarantine.append(Quarantined(str(item), None, image_id, f"{what}; rename it to include it"))
            continue
        found = inspect_path(item, roots)
        if found.kind == "file":
            scan.files[entry.name] = item
        elif found.kind == "folder":
            scan.folders[entry.name] = item
        else:
            scan.quarantine.append(Quarantined(str(item), None, image_id, found.reason))
    return scan


# ---------------------------------------------------------------------------------------- severstal CSV

_CSV_DEFAULT_FIELD_LIMIT = 131_072  # the csv module's own default: ingest raises it when a mask needs more
_FIELD_LIMIT_LOCK = threading.Lock()
_ID_PREFIX_CHARS = 4096  # how much of a line the csv module refused is re-read to find its ImageId
_LINE_BREAKS = re.compile(rb"\r\n|\r|\n")  # the CSV standard's line breaks, never U+2028, \x85, \x1c...
_RLE_SPACE = re.compile(r"[ \t\n\r\f\v]+")  # ASCII white space: what separates the numbers of an RLE
_RLE_TEXT = re.compile(r"[0-9 \t\n\r\f\v]*")
_HINT_TOKEN = re.compile(r"[^\s,\"]+")
_OTHER_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines() splits on them, CSV does not
_CLASS_SUFFIX = re.compile(r"_\d+$")
_IMAGE_SUFFIX = re.compile(r"(?:\.(?:jpe?g|png|bmp|tiff?|gif|webp))+$")
_PATH_SEPARATOR = re.compile(r"[/\\]")


@dataclass
class _Row:
    line: int
    class_id: int
    rle: str


@dataclass(frozen=True)
class _Record:
    """One CSV record: the line it starts on, the line it ends on and its fields.

    ``fault`` is set when the csv module refused the record (a field over the limit); ``fields`` are then a
    best-effort reading of the start of the line (enough for the ImageId) and ``raw`` is the line.
    """

    line: int
    last_line: int
    fields: list[str]
    fault: str | None = None
    raw: str = ""


@dataclass
class CsvLabels:
    """What ``train.csv`` says, keyed by the ImageId exactly as written."""

    kind: str = "new"  # header kind: "new" (ImageId,ClassId,...) or "old" (ImageId_ClassId,...)
    masks: dict[str, dict[int, _Row]] = field(default_factory=dict)  # images whose rows are all valid
    lines: dict[str, int] = field(default_factory=dict)  # every ImageId a row names -> line of its first row
    rejected: set[str] = field(default_factory=set)  # ImageIds with a quarantined row: never labelled
    hints: list[tuple[int, str]] = field(default_factory=list)  # (line, text) of quarantined rows
    quarantine: list[Quarantined] = field(default_factory=list)
    rows_read: int = 0
    sources: dict[str, dict] = field(default_factory=dict)
    """Each data source by name: ``path``, ``format``, ``quarantined`` (README "Data", several sources)."""
    replaced_by_review: list[dict] = field(default_factory=list)
    """Rows of other sources dropped for the same image in the ``reviewed`` source (``tasks/data/sources.py``):
    ``image_id``, ``source``, ``sha256``, ``from`` (their label), ``to`` (the reviewed one), ``reviewed_image_id``."""


def max_rle_chars(shape: tuple[int, int]) -> int:
    """Length of the longest canonical RLE of a ``shape`` mask (single spaces, no leading zeros).

    The worst case is a one-pixel run on every other pixel, placed so that the starts are as large as they can be
    (``n, n - 2, ...``): the most runs, with the longest starts. Counted digit band by digit band, never built.
    """
    n = int(shape[0]) * int(shape[1])
    if n <= 0:
        return 0
    runs = (n + 1) // 2
    first = n - 2 * (runs - 1)  # the smallest start: 1 or 2
    digits = 0
    for width in range(1, len(str(n)) + 1):
        low, high = max(first, 10 ** (width - 1)), min(n, 10**width - 1)
        low += (low - first) % 2  # every start has the parity of the first
        if low <= high:
            digits += width * ((high - low) // 2 + 1)
    return digits + runs + (2 * runs - 1)  # the starts, the lengths ("1") and the single spaces


def _raise_csv_field_limit(limit: int) -> None:
    """Raise the csv module's process-wide field limit to ``limit``; never lower it (another reader may need more)."""
    with _FIELD_LIMIT_LOCK:
        if csv.field_size_limit() < limit:
            csv.field_size_limit(limit)


def unsafe_image_id(image_id: str) -> str | None:
    """Why an ImageId cannot be a file name inside ``train_images/`` (None when it can)."""
    if not image_id.strip():
        return "empty ImageId"
    if "/" in image_id or "\\" in image_id or os.sep in image_id:
        return f"ImageId {image_id!r} holds a path separator"
    if image_id.strip() in (".", ".."):
        return f"ImageId {image_id!r} is '.' or '..'"
    if "\x00" in image_id:
        return f"ImageId {image_id!r} holds a NUL byte"
    return None


class _LineTap:
    """The lines of a text file, remembering the last one handed out (the csv module does not keep it)."""

    def __init__(self, lines: Iterable[str]):
        self._lines, self.last = iter(lines), ""

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        self.last = next(self._lines)
        return self.last


def _leading_fields(raw: str) -> list[str]:
    """The fields at the start of a line the csv module refused: enough to find its ImageId."""
    try:
        return next(csv.reader([raw[:_ID_PREFIX_CHARS]]), [])
    except csv.Error:
        return []


def _not_utf8(csv_path: Path) -> IngestError:
    """The error for a CSV that is not UTF-8, naming the line and byte of the first bad byte."""
    data = csv_path.read_bytes()
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(_LINE_BREAKS.split(body[: exc.start]))
        return IngestError(f"not UTF-8 text ({exc.reason} at byte {exc.start + len(data) - len(body)})", csv_path, line)
    return IngestError("not UTF-8 text", csv_path)


def _read_records(csv_path: Path) -> list[_Record]:
    """Every CSV record of the file, numbered by the file's own lines.

    Lines are those of the CSV standard (``\\n``, ``\\r\\n``, ``\\r``; a quoted field may hold them), never the
    Unicode separators ``str.splitlines`` also splits on. A record is numbered by the line it starts on. A
    one-line record the csv module refuses (a field over the limit) comes back with its fault and the reading
    goes on at the next line; a refused record spanning several lines is an :class:`IngestError`.
    """
    records: list[_Record] = []
    last = 0  # the last line read so far
    try:
        with csv_path.open(encoding="utf-8-sig", newline="") as fh:
            tap = _LineTap(fh)
            reader = csv.reader(tap)
            while True:
                start = last + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    last = reader.line_num
                    if last != start:
                        raise IngestError(
                            f"the record starting on line {start} cannot be read ({exc}; it runs to line {last}: "
                            "an unbalanced quote?)",
                            csv_path,
                            start,
                        ) from None
                    records.append(_Record(start, last, _leading_fields(tap.last), str(exc), tap.last))
                    continue
                last = reader.line_num
                records.append(_Record(start, last, fields))
    except UnicodeDecodeError:
        raise _not_utf8(csv_path) from None
    return records


def _open_csv(csv_path: Path, field_limit: int, max_bytes: int = DEFAULT_MAX_CSV_BYTES) -> tuple[str, list[_Record]]:
    """Read ``train.csv``: the header kind (``new`` or ``old``) and the records after the header; a file over
    ``max_bytes`` (setting ``max_csv_bytes``) is refused unread."""
    if not csv_path.is_file():
        raise IngestError("train.csv not found", csv_path)
    if (size := csv_path.stat().st_size) > max_bytes:
        raise IngestError(f"file is {size} bytes, over max_csv_bytes ({max_bytes}): refused unread", csv_path)
    if csv_path.stat().st_size == 0:
        raise IngestError(
            f"file is empty (0 bytes); expected a header {','.join(NEW_HEADER)} or {','.join(OLD_HEADER)}",
            csv_path,
            1,
        )
    _raise_csv_field_limit(field_limit)
    records = _read_records(csv_path)
    if not records:
        raise IngestError("no header line", csv_path, 1)
    header = [h.strip() for h in records[0].fields]
    if header == NEW_HEADER:
        kind = "new"
    elif header == OLD_HEADER:
        kind = "old"
    else:
        raise IngestError(
            f"unexpected header {','.join(header)!r}; expected {','.join(NEW_HEADER)!r} or {','.join(OLD_HEADER)!r}",
            csv_path,
            1,
        )
    return kind, records[1:]


def _check_line_breaks(record: _Record, kind: str, csv_path: Path) -> None:
    """Refuse the file when a quoted line break sits anywhere but in an EncodedPixels field holding numbers.

    Such a record most likely swallowed the rows after an unbalanced quote: those rows (and their images' labels)
    would be lost, so the whole file is refused instead of guessing.
    """
    if record.last_line == record.line:
        return
    rle_index = 2 if kind == "new" else 1
    for index, value in enumerate(record.fields):
        if ("\n" in value or "\r" in value) and not (index == rle_index and _RLE_TEXT.fullmatch(value)):
            raise IngestError(
                f"field {index + 1} of the record starting on line {record.line} holds a line break and runs to "
                f"line {record.last_line}; only an EncodedPixels of numbers may span lines (an unbalanced quote? "
                "the rows it swallowed would be lost)",
                csv_path,
                record.line,
            )


def _row_image_id(fields: list[str], kind: str) -> str | None:
    """The ImageId a (possibly malformed) row names, exactly as written; None when it names none."""
    if not fields or not fields[0].strip():
        return None
    key = fields[0]
    return key.rsplit("_", 1)[0] if kind == "old" and "_" in key else key


def _split_row(fields: list[str], kind: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(image_id, class_text, rle, fault) of one row in either format; the ImageId exactly as written."""
    want = 3 if kind == "new" else 2
    image_id = _row_image_id(fields, kind)
    if len(fields) != want:
        return image_id, None, None, f"expected {want} fields, found {len(fields)}"
    if kind == "new":
        return fields[0], fields[1].strip(), fields[2].strip(), None
    if "_" not in fields[0]:
        return image_id, None, None, f"ImageId_ClassId {fields[0]!r} has no '_' separating the class id"
    image_id, class_text = fields[0].rsplit("_", 1)
    return image_id, class_text.strip(), fields[1].strip(), None


def _other_breaks(text: str) -> str:
    """A note naming the Unicode line separators in ``text`` that are not CSV line breaks, else ``""``."""
    found = sorted({f"U+{ord(c):04X}" for c in text if c in _OTHER_BREAKS})
    return f" (it holds {', '.join(found)}: not a CSV line break, rows may be glued together)" if found else ""


def _normalise_rle(rle: str) -> str:
    """An RLE with its numbers separated by single spaces (a quoted RLE may hold line breaks)."""
    return _RLE_SPACE.sub(" ", rle).strip(" ")


def _group_fault(lines_by_class: dict[int, list[int]], defect_ids: set[int]) -> str | None:
    """What is wrong with one image's old-format group (one row per configured defect class), or None."""
    parts = []
    missing = sorted(defect_ids - set(lines_by_class))
    if missing:
        parts.append("missing ClassId " + ", ".join(map(str, missing)))
    for class_id, lines in sorted(lines_by_class.items()):
        if len(lines) > 1:
            parts.append(f"repeated ClassId {class_id} (rows {', '.join(map(str, lines))})")
    if not parts:
        return None
    return (
        f"incomplete ImageId_ClassId group: {'; '.join(parts)} (this format has one row for each of the "
        f"{len(defect_ids)} defect classes per image)"
    )


def read_severstal_csv(
    csv_path: Path, defect_ids: set[int], shape: tuple[int, int], max_bytes: int = DEFAULT_MAX_CSV_BYTES
) -> CsvLabels:
    """Parse and validate ``train.csv`` (either format).

    Rows are numbered by the file's lines (a record holding a quoted line break by the line it starts on). An
    image with any bad row is quarantined as a whole: it is in ``rejected`` and has no entry in ``masks``.
    """
    rle_limit = max_rle_chars(shape)
    kind, records = _open_csv(csv_path, max(_CSV_DEFAULT_FIELD_LIMIT, rle_limit), max_bytes)
    file, size = str(csv_path), f"{shape[1]}x{shape[0]}"
    labels = CsvLabels(kind=kind)
    groups: dict[str, dict[int, list[int]]] = {}  # old format: ImageId -> ClassId -> lines

    def reject(image_id: str | None, line: int, reason: str, text: str | None = None) -> None:
        labels.quarantine.append(Quarantined(file, line, image_id, reason))
        if text is not None:
            labels.hints.append((line, text))
        if image_id is not None:
            labels.rejected.add(image_id)
            labels.masks.pop(image_id, None)

    for record in records:
        line, fields = record.line, record.fields
        if record.fault is None and all(not f.strip() for f in fields):
            continue
        labels.rows_read += 1
        _check_line_breaks(record, kind, csv_path)
        image_id, class_text, rle, fault = _split_row(fields, kind)
        if image_id is not None:
            labels.lines.setdefault(image_id, line)
        if record.fault is not None:
            fault = (
                f"a field is longer than the CSV field limit ({record.fault}); "
                f"the longest RLE of a {size} mask has {rle_limit} characters"
            )
        if fault:
            text = record.raw or ",".join(fields)
            reject(image_id, line, f"malformed row: {fault}{_other_breaks(text)}", text)
            continue
        assert image_id is not None and class_text is not None and rle is not None
        if why := unsafe_image_id(image_id):
            reject(image_id, line, f"unsafe {why}; row not used", fields[0])
            continue
        try:
            class_id = int(class_text)
        except ValueError:
            reject(image_id, line, f"ClassId {class_text!r} is not an integer", fields[0])
            continue
        if class_id not in defect_ids:
            extra = " (an extra row in its ImageId_ClassId group)" if kind == "old" else ""
            reject(image_id, line, f"ClassId {class_id} is not a configured defect class {sorted(defect_ids)}{extra}")
            continue
        if kind == "old":
            groups.setdefault(image_id, {}).setdefault(class_id, []).append(line)
        rle = _normalise_rle(rle)
        if not rle:
            if kind == "new":
                reject(image_id, line, f"empty EncodedPixels for ClassId {class_id} (this format lists masks present)")
            continue  # old format: an empty mask means the class is absent
        if len(rle) > rle_limit:
            reject(
                image_id,
                line,
                f"malformed RLE for ClassId {class_id}: {len(rle)} characters, longer than any valid {size} mask "
                f"needs ({rle_limit})",
            )
            continue
        try:
            parse_runs(rle, shape)
        except RLEError as exc:
            reject(image_id, line, f"malformed RLE for ClassId {class_id}: {exc}")
            continue
        if image_id in labels.rejected:
            continue
        seen = labels.masks.setdefault(image_id, {}).get(class_id)
        if seen is None:
            labels.masks[image_id][class_id] = _Row(line, class_id, rle)
        elif seen.rle == rle:
            labels.quarantine.append(
                Quarantined(file, line, image_id, f"duplicate row: same ClassId {class_id} and RLE as row {seen.line}")
            )
        else:
            reject(image_id, line, f"conflicting rows for ClassId {class_id}: rows {seen.line} and {line} differ")
    for image_id, lines_by_class in groups.items():
        if image_id not in labels.rejected and (why := _group_fault(lines_by_class, defect_ids)):
            reject(image_id, labels.lines[image_id], why)
    return labels


# ------------------------------------------------------------------------------------ rows <-> files

_NAME_STEPS: list[tuple[str, Callable[[str], str]]] = [
    ("surrounding white space", str.strip),
    ("invisible character", lambda s: "".join(c for c in s if unicodedata.category(c) != "Cf")),
    ("Unicode form", lambda s: unicodedata.normalize("NFKC", s)),
    ("path prefix", lambda s: _PATH_SEPARATOR.split(s)[-1].strip()),
    ("letter case", lambda s: unicodedata.normalize("NFKC", s.casefold())),
]
_LOOSE_STEPS: list[tuple[str, Callable[[str], str]]] = [
    ("ClassId suffix", lambda s: _CLASS_SUFFIX.sub("", s)),
    ("extension", lambda s: _IMAGE_SUFFIX.sub("", s)),
]


def normalise_name(name: str) -> str:
    """A file name with white space, invisible characters, Unicode form (NFKC), path prefix and case ignored."""
    for _, step in _NAME_STEPS:
        name = step(name)
    return name


def _name_keys(name: str) -> tuple[set[str], set[str]]:
    """(full, loose) keys of a row's ImageId: normalised, also without a ``_ClassId`` suffix; loose: no extension."""
    full = normalise_name(name)
    keys = {full, _CLASS_SUFFIX.sub("", full)}
    return keys - {""}, {_IMAGE_SUFFIX.sub("", k) for k in keys} - {""}


def spelling_difference(row_id: str, file_name: str) -> str:
    """What separates a row's ImageId from a file name: the normalising steps that bring them together."""
    found = []
    a, b = row_id, file_name
    for label, step in (*_NAME_STEPS, *_LOOSE_STEPS):
        if a == b:
            break
        new_a, new_b = step(a), step(b)
        if (new_a, new_b) != (a, b):
            found.append(label)
        a, b = new_a, new_b
    return ", ".join(found) or "spelling"


def _file_index(on_disk: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """File names by their normalised name (full) and by that name without an image extension (loose)."""
    full: dict[str, set[str]] = {}
    loose: dict[str, set[str]] = {}
    for name in on_disk:
        key = normalise_name(name)
        full.setdefault(key, set()).add(name)
        loose.setdefault(_IMAGE_SUFFIX.sub("", key), set()).add(name)
    return full, loose


def _listing(items: list[str], most: int = 3) -> str:
    """``a, b, c`` or ``a, b, c and N more``."""
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def match_rows_to_files(
    labels: CsvLabels, on_disk: dict[str, Path], image_dir: Path
) -> tuple[dict[str, Path], list[Quarantined]]:
    """The files that may be labelled from the CSV, and the quarantine records for rows and files that may not.

    A row belongs to the file its ImageId names exactly. A row naming no file exactly is matched again after
    :func:`normalise_name` (and without a ``_ClassId`` suffix or an image extension): every file it then matches
    is quarantined, naming both spellings, since its label cannot be known for sure; a row matching no file is a
    missing image. A row naming a file exactly also quarantines the other files whose names normalise to the same
    (``a.jpg`` and ``A.JPG`` side by side): which of them it means cannot be known for sure. A file named by a
    quarantined row (exactly, after normalising, or anywhere inside a malformed row) stays out of the manifest
    too, and so does, in the old format, a file no row names.
    """
    full_index, loose_index = _file_index(on_disk)
    excluded = {i for i in labels.rejected if i in on_disk}  # their row-level record already names them
    spelled: dict[str, list[tuple[int, str]]] = {}  # file -> (line, "'row id' (difference)")
    inside: dict[str, list[tuple[int, str]]] = {}  # file -> (line, token of a quarantined row naming it)
    records: list[Quarantined] = []
    for image_id, line in sorted(labels.lines.items(), key=lambda item: (item[1], item[0])):
        full, loose = _name_keys(image_id)
        if image_id in on_disk:  # its own file; another file whose name normalises the same is ambiguous
            matches = set().union(*(full_index.get(k, ()) for k in full)) - {image_id}
        else:
            matches = set().union(*(full_index.get(k, ()) for k in full), *(loose_index.get(k, ()) for k in loose))
        for name in matches:
            spelled.setdefault(name, []).append((line, f"{image_id!r} ({spelling_difference(image_id, name)})"))
        if not matches and image_id not in on_disk and image_id not in labels.rejected:
            records.append(Quarantined(str(image_dir / image_id), line, image_id, "missing image: file not found"))
    for line, text in labels.hints:
        for token in sorted({t for t in _HINT_TOKEN.findall(text) if not t.isdigit()} - labels.rejected):
            for name in set().union(*(full_index.get(k, ()) for k in _name_keys(token)[0])):
                inside.setdefault(name, []).append((line, repr(token)))
    for name in sorted((set(spelled) | set(inside)) - excluded):
        parts = []
        if name in spelled:
            rows = [f"row {line} {text}" for line, text in sorted(set(spelled[name]))]
            parts.append(f"ImageId spelled differently in train.csv: {_listing(rows)} for file {name!r}")
        if name in inside:
            rows = [f"row {line} ({text})" for line, text in sorted(set(inside[name]))]
            parts.append(f"named inside quarantined {_listing(rows)} of train.csv")
        first = min(line for line, _ in spelled.get(name, []) + inside.get(name, []))
        reason = "; ".join(parts) + "; its label cannot be known for sure"
        records.append(Quarantined(str(on_disk[name]), first, name, reason))
    candidates = {n: p for n, p in on_disk.items() if n not in excluded and n not in spelled and n not in inside}
    if labels.kind == "old":  # this format lists every image, OK ones with empty masks: no row means no label
        for name in sorted(set(candidates) - set(labels.lines)):
            reason = (
                "not listed in train.csv: the ImageId_ClassId format has a row for every defect class of every "
                "image (empty EncodedPixels when absent), so an image with no row has no known label"
            )
            records.append(Quarantined(str(candidates.pop(name)), None, name, reason))
    return candidates, records


def ingest_severstal(root: Path, settings: Settings) -> IngestResult:
    """Validate a Severstal-layout directory."""
    csv_path = root / "train.csv"
    image_dir = root / "train_images"
    class_names = dict(settings.class_names)
    defect_ids = {cid for cid in class_names if cid != 0}
    shape = settings.image_shape
    labels = read_severstal_csv(csv_path, defect_ids, shape, settings.max_csv_bytes)
    masks, first_line, quarantine = labels.masks, labels.lines, labels.quarantine

    on_disk = _scan_train_images(image_dir, root, first_line, quarantine, labels.rejected)

    candidates, unmatched = match_rows_to_files(labels, on_disk, image_dir)
    quarantine += unmatched
    infos, faults = _check_images(candidates, shape, settings)
    for image_id, reason in sorted(faults.items()):
        quarantine.append(Quarantined(str(candidates[image_id]), first_line.get(image_id), image_id, reason))

    priority = settings.priority_ids()
    records, mask_rows = [], []
    for image_id, info in sorted(infos.items()):
        image_masks = masks.get(image_id, {})
        classes = sorted(image_masks)
        label = next((cid for cid in priority if cid in image_masks), 0)
        record = _record(image_id, candidates[image_id], classes, label, class_names, info)
        for cid in sorted(defect_ids):
            row = image_masks.get(cid)
            record[f"pixels_{class_names[cid]}"] = rle_pixel_count(row.rle, shape) if row else 0
        records.append(record)
        mask_rows += [
            {"image_id": image_id, "class_id": cid, "encoded_pixels": image_masks[cid].rle} for cid in classes
        ]
    manifest = pd.DataFrame.from_records(records, columns=_manifest_columns(class_names, with_pixels=True))
    mask_df = pd.DataFrame.from_records(mask_rows, columns=["image_id", "class_id", "encoded_pixels"])
    return IngestResult(
        root, "severstal", class_names, settings.critical_class, manifest, mask_df, quarantine, labels.rows_read
    )


def _scan_train_images(
    image_dir: Path, root: Path, first_line: dict[str, int], quarantine: list[Quarantined], rejected: set[str]
) -> dict[str, Path]:
    """The usable files of ``train_images/`` by name (``on_disk``); what is refused goes to ``quarantine``.

    A refused entry carries the CSV row that names it, and its name joins ``rejected``, so the row is not also
    reported as a missing image.
    """
    if not image_dir.is_dir():
        if os.path.lexists(image_dir):
            reason = inspect_path(image_dir).reason
            quarantine.append(Quarantined(str(image_dir), None, None, f"train_images/ is not a folder: {reason}"))
        log.warning("%s is not a readable folder: every row refers to a missing image", image_dir)
        return {}
    if image_dir.is_symlink():
        log.info("%s is a symlink to %s: read", image_dir, os.path.realpath(image_dir))
    scan = scan_dir(image_dir, root)
    for folder in scan.folders.values():
        quarantine.append(Quarantined(str(folder), None, None, "folder inside train_images/ (not scanned)"))
    for record in scan.quarantine:
        image_id = record.image_id or Path(record.file).name
        quarantine.append(replace(record, row=first_line.get(image_id)))
        rejected.add(image_id)
    return scan.files


# -------------------------------------------------------------------------------------------- folders


def _not_used(scan: Scan) -> str:
    """The top-level entries a scan refused, for an error message ("" when none)."""
    refused = [f"{Path(q.file).name} ({q.reason})" for q in scan.quarantine]
    return f"; not used: {'; '.join(refused)}" if refused else ""


def _class_map(scan: Scan, root: Path) -> dict[int, str]:
    """Class map from the real folders of a scan of ``root``: ``ok`` is 0 when present, the rest 1.."""
    names = sorted(scan.folders)
    if not names:
        raise IngestError(f"no class folders found (expected DIR/<class>/*.jpg){_not_used(scan)}", root)
    ok = [n for n in names if n.lower() == "ok"]
    if len(ok) > 1:
        raise IngestError(f"more than one folder means 'ok': {ok}", root)
    defects = [n for n in names if n.lower() != "ok"]
    class_names = {0: ok[0]} if ok else {}
    class_names.update({i + 1: n for i, n in enumerate(defects)})
    return class_names


def folder_classes(root: Path) -> dict[int, str]:
    """Class map of a class-per-folder directory: ``ok`` is 0 when present, the rest 1.. alphabetically.

    Only real, visible folders are classes: a symlinked folder is not followed (it is quarantined by ingest).
    """
    return _class_map(scan_dir(root, root, id_prefix=None), root)


def _scan_class_folder(name: str, path: Path, root: Path, quarantine: list[Quarantined]) -> dict[str, Path]:
    """Image files of one class folder by image id (``class/file``); everything else goes to ``quarantine``."""
    scan = scan_dir(path, root, id_prefix=f"{name}/")
    quarantine += scan.quarantine
    for folder in scan.folders.values():
        quarantine.append(Quarantined(str(folder), None, None, "nested folder inside a class folder (not scanned)"))
    images: dict[str, Path] = {}
    for file_name, file_path in scan.files.items():
        image_id = f"{name}/{file_name}"
        if Path(file_name).suffix.lower() in IMAGE_EXTENSIONS:
            images[image_id] = file_path
        else:
            quarantine.append(
                Quarantined(str(file_path), None, image_id, f"not an image extension ({sorted(IMAGE_EXTENSIONS)})")
            )
    return images


def ingest_folders(
    root: Path, settings: Settings, critical_class: str | None = None, require_critical: bool = True
) -> IngestResult:
    """Validate a class-per-folder directory; class names come from the folders. Without ``require_critical`` (one
    source of several, checked over all of them) the critical class need not have a folder here."""
    top = scan_dir(root, root, id_prefix=None)
    class_names = _class_map(top, root)
    critical = critical_class or settings.critical_class
    defect_names = [n for cid, n in sorted(class_names.items()) if cid != 0]
    if require_critical and critical not in defect_names:
        raise IngestError(
            f"critical class {critical!r} is not among the defect classes found: {', '.join(defect_names)} "
            "(pick one with --critical-class)",
            root,
        )
    quarantine: list[Quarantined] = list(top.quarantine)
    quarantine += [
        Quarantined(str(p), None, None, "file outside any class folder (not used)") for p in top.files.values()
    ]
    candidates: dict[str, Path] = {}
    labels: dict[str, int] = {}
    for cid, name in sorted(class_names.items()):
        for image_id, path in _scan_class_folder(name, top.folders[name], root, quarantine).items():
            candidates[image_id], labels[image_id] = path, cid
    infos, faults = _check_images(candidates, None, settings)
    quarantine += [Quarantined(str(candidates[i]), None, i, r) for i, r in sorted(faults.items())]
    records = []
    for image_id, info in sorted(infos.items()):
        label = labels[image_id]
        records.append(_record(image_id, candidates[image_id], [label] if label else [], label, class_names, info))
    manifest = pd.DataFrame.from_records(records, columns=_manifest_columns(class_names, with_pixels=False))
    masks = pd.DataFrame(columns=["image_id", "class_id", "encoded_pixels"])
    return IngestResult(root, "folders", class_names, critical, manifest, masks, quarantine, 0)


# ---------------------------------------------------------------------------------------------- shared


def _manifest_columns(class_names: dict[int, str], with_pixels: bool) -> list[str]:
    base = ["image_id", "path", "classes", "label", "label_name", "height", "width", "chroma"]
    base += ["format", "sha256", "note"]
    if with_pixels:
        base += [f"pixels_{n}" for cid, n in sorted(class_names.items()) if cid != 0]
    return base


def _record(
    image_id: str, path: Path, classes: list[int], label: int, class_names: dict[int, str], info: ImageInfo
) -> dict:
    return {
        "image_id": image_id,
        "path": str(path.resolve()),
        "classes": " ".join(map(str, classes)),
        "label": label,
        "label_name": class_names[label],
        "height": info.height,
        "width": info.width,
        "chroma": info.chroma,
        "format": info.format,
        "sha256": info.sha256,
        "note": "; ".join(n for n in (_extension_note(path, info.format), info.note) if n),
    }


def detect_format(root: Path) -> str:
    """``severstal`` when ``train.csv`` is present, ``folders`` when there are class folders."""
    if (root / "train.csv").exists():
        return "severstal"
    scan = scan_dir(root, root, id_prefix=None)
    if scan.folders:
        return "folders"
    raise IngestError(f"cannot tell the layout: no train.csv and no class folders{_not_used(scan)}", root)


def ingest_layout(
    root: Path | str,
    settings: Settings,
    fmt: Format = "auto",
    critical_class: str | None = None,
    require_critical: bool = True,
) -> IngestResult:
    """Validate ``root`` in the given (or detected) layout, before the data set's channels are decided."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError("data directory does not exist or is not a directory", root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "severstal":
        if critical_class and critical_class != settings.critical_class:
            settings = settings.model_copy(update={"critical_class": critical_class})
            if critical_class not in settings.class_ids or settings.class_ids[critical_class] == 0:
                names = [n for c, n in sorted(settings.class_names.items()) if c]
                raise IngestError(f"critical class {critical_class!r} is not a defect class: {', '.join(names)}", root)
        return ingest_severstal(root, settings)
    if fmt == "folders":
        return ingest_folders(root, settings, critical_class, require_critical)
    raise IngestError(f"unknown format {fmt!r} (auto, severstal or folders)", root)


def source_name_of(root: Path | str) -> str:
    """The name of a data source given without one: its folder's name (characters other than letters, digits,
    ``_``, ``.`` and ``-`` become ``-``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(root).resolve().name).strip("-.")
    return name or "data"


def with_source(result: IngestResult, name: str) -> IngestResult:
    """The result with its ``source`` column (the source's name in every manifest row) and its ``sources`` entry."""
    manifest = result.manifest.copy()
    manifest["source"] = name
    entry = {"path": str(result.source), "format": result.format, "quarantined": len(result.quarantine)}
    return replace(result, manifest=manifest, sources={name: entry})


def ingest(
    root: Path | str,
    settings: Settings,
    fmt: Format = "auto",
    critical_class: str | None = None,
    source: str | None = None,
) -> IngestResult:
    """Validate ``root`` in the given (or detected) layout; its rows' ``source`` is ``source`` (default: the folder's
    name, :func:`source_name_of`)."""
    result = ingest_layout(root, settings, fmt, critical_class)
    result = with_channels(with_source(result, source or source_name_of(root)))
    log.info(
        "%s: %s data (%d of %d valid images colour)",
        root, "colour" if result.channels == 3 else "grey", result.colour_images(), len(result.manifest),
    )  # fmt: skip
    return result


def dataset_fingerprint(manifest: pd.DataFrame, class_names: dict[int, str]) -> str:
    """Stable hash of the label space and of every image's id, content hash and classes."""
    digest = hashlib.sha256(json.dumps(sorted(class_names.items())).encode())
    for image_id, sha, label, classes in sorted(
        zip(manifest["image_id"], manifest["sha256"], manifest["label"], manifest["classes"], strict=True)
    ):
        digest.update(f"\n{image_id}\t{sha}\t{label}\t{classes}".encode())
    return digest.hexdigest()


def new_run_dir(settings: Settings, prefix: str = "run") -> Path:
    """A fresh run folder under ``STEELQC_HOME/runs``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = settings.runs_dir / f"{prefix}-{stamp}-{os.urandom(3).hex()}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def check_out_dir(out: Path, root: Path) -> None:
    """Refuse an output folder inside the data directory (it would become part of the data)."""
    out_r, root_r = out.resolve(), root.resolve()
    if out_r == root_r or root_r in out_r.parents:
        raise IngestError(f"output folder {out} is inside the data directory; choose one outside it", root)


def write_outputs(result: IngestResult, out: Path) -> dict:
    """Write manifest.csv, masks.csv, quarantine.csv and ingest.json into ``out``; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_path, masks_path = out / "manifest.csv", out / "masks.csv"
    quarantine_path, summary_path = out / "quarantine.csv", out / "ingest.json"
    result.manifest.to_csv(manifest_path, index=False)
    result.masks.to_csv(masks_path, index=False)
    _write_quarantine(result.quarantine, quarantine_path)
    summary = summarise(result)
    summary.update(manifest=str(manifest_path), quarantine=str(quarantine_path), masks=str(masks_path), out=str(out))
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def _write_quarantine(records: Iterable[Quarantined], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(QUARANTINE_COLUMNS)
        for q in records:
            writer.writerow([q.file, "" if q.row is None else q.row, q.image_id or "", q.reason])


def summarise(result: IngestResult) -> dict:
    """The JSON summary of `steelqc ingest --json` (README "Data"), without the output paths."""
    rejected = {q.image_id or q.file for q in result.quarantine if "duplicate row" not in q.reason}
    return {
        "source": str(result.source)
        if len(result.sources) <= 1
        else ", ".join(f"{name}={entry['path']}" for name, entry in result.sources.items()),
        "sources": source_summaries(result),
        "format": result.format,
        "valid": len(result.manifest),
        "quarantined": len(result.quarantine),
        "quarantined_images": len(rejected),
        "by_class": result.by_class(),
        "masks_by_class": {
            result.class_names[int(cid)]: int(n)
            for cid, n in sorted(Counter(result.masks["class_id"].astype(int).tolist()).items())
        },
        "classes": {str(k): v for k, v in sorted(result.class_names.items())},
        "channels": result.channels,
        "colour_images": result.colour_images(),
        "critical_class": result.critical_class,
        "rows_read": result.rows_read,
        "fingerprint": result.fingerprint,
        "relabelled_by_review": [r for r in result.replaced_by_review if r["from"] != r["to"]],
        "confirmed_by_review": sum(r["from"] == r["to"] for r in result.replaced_by_review),
    }


def source_summaries(result: IngestResult) -> dict[str, dict]:
    """Each source by name: ``path``, ``format``, ``valid``, ``quarantined`` and ``by_class`` (its valid images by
    class name)."""
    out: dict[str, dict] = {}
    sources = result.manifest["source"] if "source" in result.manifest else pd.Series(dtype=str)
    for name, entry in result.sources.items():
        labels = result.manifest.loc[sources == name, "label"].tolist()
        counts = Counter(labels)
        by_class = {n: int(counts.get(cid, 0)) for cid, n in sorted(result.class_names.items())}
        out[name] = {**entry, "valid": len(labels), "by_class": by_class}
    return out


def load_manifest(path: Path | str) -> pd.DataFrame:
    """Read a manifest written by :func:`write_outputs` with stable dtypes."""
    return pd.read_csv(
        path, dtype={"image_id": str, "classes": str, "sha256": str, "note": str, "source": str}, keep_default_na=False
    )
