"""Ingest: validate a raw data set and build the manifest, the quarantine list and the fingerprint.

Two layouts are read:

* **Severstal**: ``DIR/train.csv`` (Kaggle's new ``ImageId,ClassId,EncodedPixels`` or the old
  ``ImageId_ClassId,EncodedPixels`` with four rows per image) and images in ``DIR/train_images/``.
  An image with no defect row is an OK image.
* **Folders**: ``DIR/<class>/*.{jpg,jpeg,png,bmp}``; a folder named ``ok`` means no defect.

Faults in a row or an image put that image in quarantine with a reason; everything else goes on. Faults that
make the whole data set unreadable (an empty CSV, a wrong header, an unknown critical class) raise
:class:`IngestError`.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import os
import stat
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from PIL import Image, UnidentifiedImageError

from tasks.config import DEFAULT_MAX_IMAGE_BYTES, Settings
from tasks.imageio import (
    NotRegularFile,
    UnsupportedImage,
    conversion_note,
    file_kind,
    image_to_array,
    read_regular_file,
    unsupported_mode_reason,
)
from tasks.rle import RLEError, parse_runs

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


class IngestError(Exception):
    """The data set as a whole cannot be read; names the file and, where known, the row."""

    def __init__(self, message: str, file: Path | str | None = None, row: int | None = None):
        self.message, self.file, self.row = message, (str(file) if file else None), row
        where = f"{self.file}" + (f", row {row}" if row is not None else "") if self.file else ""
        super().__init__(f"{where}: {message}" if where else message)

    def to_dict(self) -> dict:
        return {"error": str(self), "file": self.file, "row": self.row}


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

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.manifest, self.class_names)

    def by_class(self) -> dict[str, int]:
        counts = Counter(self.manifest["label"].tolist()) if len(self.manifest) else Counter()
        return {name: int(counts.get(cid, 0)) for cid, name in sorted(self.class_names.items())}


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
    height, width, fmt, note = _decode_checked(io.BytesIO(data), expected_shape, max_pixels)
    notes = "; ".join(n for n in (entry.note, note) if n)
    return ImageInfo(height=height, width=width, format=fmt, sha256=hashlib.sha256(data).hexdigest(), note=notes)


def _decode_checked(
    data: io.BytesIO, expected_shape: tuple[int, int] | None, max_pixels: int
) -> tuple[int, int, str, str]:
    """(height, width, format, conversion note) of image bytes, checked before and by a full decode."""
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
                image_to_array(image)
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
    return height, width, fmt, note


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


@dataclass
class _Row:
    line: int
    class_id: int
    rle: str


def unsafe_image_id(image_id: str) -> str | None:
    """Why an ImageId cannot name a file inside ``train_images/`` (None when it is safe)."""
    if not image_id:
        return "empty ImageId"
    if "/" in image_id or "\\" in image_id or os.sep in image_id:
        return f"ImageId {image_id!r} holds a path separator"
    if ".." in image_id:
        return f"ImageId {image_id!r} holds '..'"
    if "\x00" in image_id or image_id != image_id.strip():
        return f"ImageId {image_id!r} holds a NUL byte or surrounding spaces"
    return None


def _open_csv(csv_path: Path) -> tuple[list[list[str]], str]:
    """Read the CSV rows (with line numbers preserved as list index + 2) and tell the header kind."""
    if not csv_path.is_file():
        raise IngestError("train.csv not found", csv_path)
    if csv_path.stat().st_size == 0:
        raise IngestError(
            f"file is empty (0 bytes); expected a header {','.join(NEW_HEADER)} or {','.join(OLD_HEADER)}",
            csv_path,
            1,
        )
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", csv_path) from None
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise IngestError("no header line", csv_path, 1) from None
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
    return list(reader), kind


def _split_row(fields: list[str], kind: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(image_id, class_text, rle, fault) of one row in either format."""
    want = 3 if kind == "new" else 2
    if len(fields) != want:
        image_id = fields[0].strip() if fields else None
        if kind == "old" and image_id and "_" in image_id:
            image_id = image_id.rsplit("_", 1)[0]
        return image_id or None, None, None, f"expected {want} fields, found {len(fields)}"
    if kind == "new":
        return fields[0].strip(), fields[1].strip(), fields[2].strip(), None
    key, rle = fields[0].strip(), fields[1].strip()
    if "_" not in key:
        return None, None, None, f"ImageId_ClassId {key!r} has no '_' separating the class id"
    image_id, class_text = key.rsplit("_", 1)
    return image_id, class_text, rle, None


def read_severstal_csv(
    csv_path: Path, defect_ids: set[int], shape: tuple[int, int]
) -> tuple[dict[str, dict[int, _Row]], dict[str, int], list[Quarantined], int]:
    """Parse and validate ``train.csv``.

    Returns (masks by image and class, first line of each image id seen, quarantine records, rows read).
    An image with any bad row is quarantined as a whole and has no entry in the first mapping.
    """
    rows, kind = _open_csv(csv_path)
    file = str(csv_path)
    masks: dict[str, dict[int, _Row]] = {}
    first_line: dict[str, int] = {}
    bad_images: set[str] = set()
    quarantine: list[Quarantined] = []

    def reject_image(image_id: str, line: int, reason: str) -> None:
        quarantine.append(Quarantined(file, line, image_id, reason))
        bad_images.add(image_id)
        masks.pop(image_id, None)

    n_rows = 0
    for offset, fields in enumerate(rows):
        line = offset + 2
        if not fields or all(not f.strip() for f in fields):
            continue
        n_rows += 1
        image_id, class_text, rle, fault = _split_row(fields, kind)
        if image_id is not None and (why := unsafe_image_id(image_id)):
            quarantine.append(Quarantined(file, line, image_id, f"unsafe {why}; row skipped"))
            continue
        if fault:
            if image_id:
                reject_image(image_id, line, f"malformed row: {fault}")
            else:
                quarantine.append(Quarantined(file, line, None, f"malformed row: {fault}"))
            continue
        assert image_id is not None and class_text is not None and rle is not None
        first_line.setdefault(image_id, line)
        try:
            class_id = int(class_text)
        except ValueError:
            reject_image(image_id, line, f"ClassId {class_text!r} is not an integer")
            continue
        if class_id not in defect_ids:
            reject_image(image_id, line, f"ClassId {class_id} is not a configured defect class {sorted(defect_ids)}")
            continue
        if not rle:
            if kind == "new":
                reject_image(
                    image_id, line, f"empty EncodedPixels for ClassId {class_id} (this format lists masks present)"
                )
            continue  # old format: an empty mask means the class is absent
        try:
            parse_runs(rle, shape)
        except RLEError as exc:
            reject_image(image_id, line, f"malformed RLE for ClassId {class_id}: {exc}")
            continue
        if image_id in bad_images:
            continue
        seen = masks.setdefault(image_id, {}).get(class_id)
        if seen is None:
            masks[image_id][class_id] = _Row(line, class_id, rle)
        elif seen.rle == rle:
            quarantine.append(
                Quarantined(file, line, image_id, f"duplicate row: same ClassId {class_id} and RLE as row {seen.line}")
            )
        else:
            reject_image(image_id, line, f"conflicting rows for ClassId {class_id}: rows {seen.line} and {line} differ")
    return masks, first_line, quarantine, n_rows


def ingest_severstal(root: Path, settings: Settings) -> IngestResult:
    """Validate a Severstal-layout directory."""
    csv_path = root / "train.csv"
    image_dir = root / "train_images"
    class_names = dict(settings.class_names)
    defect_ids = {cid for cid in class_names if cid != 0}
    shape = settings.image_shape
    masks, first_line, quarantine, n_rows = read_severstal_csv(csv_path, defect_ids, shape)
    rejected = {q.image_id for q in quarantine if q.image_id and "duplicate row" not in q.reason}

    on_disk = _scan_train_images(image_dir, root, first_line, quarantine, rejected)

    for image_id in sorted(set(first_line) - set(on_disk) - rejected):
        quarantine.append(
            Quarantined(str(image_dir / image_id), first_line[image_id], image_id, "missing image: file not found")
        )
        rejected.add(image_id)

    candidates = {i: p for i, p in on_disk.items() if i not in rejected}
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
            record[f"pixels_{class_names[cid]}"] = int(parse_runs(row.rle, shape)[1].sum()) if row else 0
        records.append(record)
        mask_rows += [
            {"image_id": image_id, "class_id": cid, "encoded_pixels": image_masks[cid].rle} for cid in classes
        ]
    manifest = pd.DataFrame.from_records(records, columns=_manifest_columns(class_names, with_pixels=True))
    mask_df = pd.DataFrame.from_records(mask_rows, columns=["image_id", "class_id", "encoded_pixels"])
    return IngestResult(root, "severstal", class_names, settings.critical_class, manifest, mask_df, quarantine, n_rows)


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


def ingest_folders(root: Path, settings: Settings, critical_class: str | None = None) -> IngestResult:
    """Validate a class-per-folder directory; class names come from the folders."""
    top = scan_dir(root, root, id_prefix=None)
    class_names = _class_map(top, root)
    critical = critical_class or settings.critical_class
    defect_names = [n for cid, n in sorted(class_names.items()) if cid != 0]
    if critical not in defect_names:
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
    base = ["image_id", "path", "classes", "label", "label_name", "height", "width", "format", "sha256", "note"]
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


def ingest(
    root: Path | str, settings: Settings, fmt: Format = "auto", critical_class: str | None = None
) -> IngestResult:
    """Validate ``root`` in the given (or detected) layout."""
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
        return ingest_folders(root, settings, critical_class)
    raise IngestError(f"unknown format {fmt!r} (auto, severstal or folders)", root)


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
    """The JSON summary of ARCHITECTURE.md (without the output paths)."""
    rejected = {q.image_id or q.file for q in result.quarantine if "duplicate row" not in q.reason}
    return {
        "source": str(result.source),
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
        "critical_class": result.critical_class,
        "rows_read": result.rows_read,
        "fingerprint": result.fingerprint,
    }


def load_manifest(path: Path | str) -> pd.DataFrame:
    """Read a manifest written by :func:`write_outputs` with stable dtypes."""
    return pd.read_csv(path, dtype={"image_id": str, "classes": str, "sha256": str, "note": str}, keep_default_na=False)
