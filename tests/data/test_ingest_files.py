"""Ingest and things in the data folder that are not plain image files (issue 8, items 4 and 7).

FIFOs, sockets, device nodes, symlink loops, dangling symlinks, symlinks out of the data folder, oversized files,
hidden files and OS litter: each must be quarantined with its reason (never opened, so nothing blocks), and the
valid images next to them must still reach the manifest. Ingest runs in a subprocess with a timeout, so an
implementation that opens a FIFO fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import ImageFault, IngestError, check_image, detect_format, folder_classes, scan_dir
from tests.helpers import ROOT, H, W, alarm

TIMEOUT_S = 60

_RUNNER = """
import dataclasses, json, sys
from pathlib import Path
from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import ingest
result = ingest(Path(sys.argv[1]), Settings(), sys.argv[2])
print(json.dumps({
    "manifest": result.manifest.to_dict("records"),
    "quarantine": [dataclasses.asdict(q) for q in result.quarantine],
    "classes": {str(k): v for k, v in result.class_names.items()},
}, default=str))
"""


def run_ingest(root: Path, fmt: str = "auto", env: dict[str, str] | None = None) -> dict:
    """Ingest ``root`` in a subprocess; a hang (e.g. a FIFO opened for reading) fails the test after a timeout."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(root), fmt],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"ingest did not finish within {TIMEOUT_S} s (blocked on a special file?)")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def write_image(path: Path, shape: tuple[int, int] = (H, W), fmt: str = "PNG", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(60, 200, size=shape, dtype=np.uint8), "L").save(path, fmt)
    return path


def make_socket(path: Path) -> socket.socket | None:
    """A bound UNIX socket at ``path`` (None where the path is too long for AF_UNIX)."""
    if len(os.fsencode(path)) >= 100:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def make_char_device(path: Path) -> bool:
    """A /dev/null-like character device node at ``path`` (False where mknod is not permitted)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


def reasons_by_name(result: dict) -> dict[str, str]:
    """Quarantine reasons keyed by the file's name (the last path component)."""
    return {Path(q["file"]).name: q["reason"] for q in result["quarantine"]}


# ------------------------------------------------------------------------------------------ severstal layout


@pytest.fixture
def special_severstal(tmp_path: Path) -> Iterator[tuple[Path, bool, bool]]:
    """A Severstal data set whose train_images/ holds one of each kind of special entry next to valid images."""
    root = tmp_path / "plant"
    images = root / "train_images"
    write_image(images / "ok.png", seed=1)
    write_image(images / "crack.png", seed=2)
    write_image(root / "extra" / "real.png", seed=3)  # inside the data folder, outside train_images/
    write_image(tmp_path / "elsewhere.png", seed=4)  # outside the data folder
    os.symlink("../extra/real.png", images / "alias.png")
    os.symlink("crack.png", images / "alias2.png")
    os.mkfifo(images / "fifo.png")
    os.symlink("loop.png", images / "loop.png")
    os.symlink("a.png", images / "b.png")
    os.symlink("b.png", images / "a.png")
    os.symlink("nothing-here.png", images / "dangling.png")
    os.symlink(tmp_path / "elsewhere.png", images / "outside.png")
    os.symlink("/dev/zero", images / "zero.png")
    os.symlink("../extra", images / "folderlink")
    os.symlink("fifo.png", images / "to_fifo.png")
    padded = write_image(tmp_path / "big.png", seed=5).read_bytes() + bytes(2_000_000)  # trailing bytes: valid
    (images / "big.png").write_bytes(padded)
    write_image(images / ".img_001.png", seed=6)
    for litter in (".DS_Store", "._crack.png", "Thumbs.db", "desktop.ini"):
        (images / litter).write_bytes(b"\x00\x05\x16\x07 litter")
    sock = make_socket(images / "sock.png")
    device = make_char_device(images / "null.png")
    (root / "train.csv").write_text(
        "ImageId,ClassId,EncodedPixels\n"
        "crack.png,1,100 20\n"
        "alias.png,1,5 5\n"
        "fifo.png,1,1 5\n"
        "loop.png,3,1 5\n"
        "outside.png,1,1 5\n"
    )
    try:
        yield root, sock is not None, device
    finally:
        if sock is not None:
            sock.close()


def test_severstal_special_files_are_quarantined_unread_and_valid_images_kept(
    special_severstal: tuple[Path, bool, bool],
) -> None:
    root, has_socket, has_device = special_severstal
    big = (root / "train_images" / "big.png").stat().st_size
    result = run_ingest(root, env={"STEELQC_MAX_IMAGE_BYTES": str(big - 1)})
    manifest = {r["image_id"]: r for r in result["manifest"]}
    assert set(manifest) == {"ok.png", "crack.png", "alias.png", "alias2.png"}
    assert manifest["alias.png"]["label_name"] == "crack"  # read through the link, label from its row
    assert "symlink" in manifest["alias.png"]["note"] and "real.png" in manifest["alias.png"]["note"]
    assert manifest["alias.png"]["path"] == str((root / "extra" / "real.png").resolve())
    assert "symlink" in manifest["alias2.png"]["note"]
    assert manifest["ok.png"]["note"] == ""

    reasons = reasons_by_name(result)
    expected = {
        "fifo.png": "named pipe (FIFO)",
        "loop.png": "symlink loop",
        "a.png": "symlink loop",
        "b.png": "symlink loop",
        "dangling.png": "dangling symlink",
        "outside.png": "outside the data folder",
        "zero.png": "outside the data folder",
        "folderlink": "symlink to a folder",
        "to_fifo.png": "symlink to a named pipe (FIFO)",
        "big.png": "over max_image_bytes",
        ".img_001.png": "hidden file: not used; rename it to include it",
    }
    if has_socket:
        expected["sock.png"] = "socket"
    if has_device:
        expected["null.png"] = "character device"
    for name, fragment in expected.items():
        assert name in reasons, f"{name} not quarantined: {reasons}"
        assert fragment in reasons[name], (name, reasons[name])
    for name in ("fifo.png", "loop.png", "outside.png", "zero.png", "to_fifo.png", "big.png"):
        assert "not read" in reasons[name] or "unread" in reasons[name], (name, reasons[name])
    for litter in (".DS_Store", "._crack.png", "Thumbs.db", "desktop.ini"):
        assert litter not in reasons
    assert set(reasons) == set(expected)

    by_id = {q["image_id"]: q for q in result["quarantine"]}
    assert by_id["fifo.png"]["row"] == 4 and by_id["loop.png"]["row"] == 5  # the row that names it
    assert not any("missing image" in q["reason"] for q in result["quarantine"])


def test_oversized_file_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", (64, 64))
    size = path.stat().st_size
    with pytest.raises(ImageFault, match=rf"{size} bytes, over max_image_bytes \({size - 1}\)"):
        check_image(path, None, max_pixels=10**6, max_bytes=size - 1)
    assert check_image(path, None, max_pixels=10**6, max_bytes=size).width == 64


def test_max_image_bytes_setting_has_a_default_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_image_bytes == 64 * 1024 * 1024
    monkeypatch.setenv("STEELQC_MAX_IMAGE_BYTES", "1000")
    assert Settings().max_image_bytes == 1000
    with pytest.raises(ValueError):
        Settings(max_image_bytes=0)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("fifo", r"named pipe \(FIFO\): not a regular file, not read"),
        ("loop", "symlink loop"),
        ("dangling", "dangling symlink to 'nowhere.png'"),
        ("socket", "socket: not a regular file, not read"),
        ("folder", "folder: not a regular file, not read"),
    ],
)
def test_check_image_refuses_anything_but_a_regular_file_without_blocking(
    tmp_path: Path, kind: str, reason: str
) -> None:
    path = tmp_path / "x.png"
    sock = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(path.name, path)
    elif kind == "dangling":
        os.symlink("nowhere.png", path)
    elif kind == "socket":
        sock = make_socket(path)
        if sock is None:
            pytest.skip("temporary path too long for a UNIX socket")
    else:
        path.mkdir()
    try:
        with alarm(10), pytest.raises(ImageFault, match=reason):
            check_image(path, None, max_pixels=10**6)
    finally:
        if sock is not None:
            sock.close()


def test_check_image_reads_a_symlink_to_a_regular_file_and_notes_it(tmp_path: Path) -> None:
    write_image(tmp_path / "real.png", (32, 32))
    os.symlink("real.png", tmp_path / "link.png")
    info = check_image(tmp_path / "link.png", None, max_pixels=10**6)
    assert info.width == 32 and "symlink to real.png" in info.note
    assert check_image(tmp_path / "real.png", None, max_pixels=10**6).note == ""


# ------------------------------------------------------------------------------------------ folders layout


@pytest.fixture
def special_folders(tmp_path: Path) -> Path:
    root = tmp_path / "plant"
    write_image(root / "ok" / "o1.png", (32, 32), seed=1)
    write_image(root / "crack" / "c1.png", (32, 32), seed=2)
    write_image(root / "crack" / "c2.png", (32, 32), seed=3)
    os.symlink("c1.png", root / "crack" / "c1-link.png")
    os.symlink("../ok/o1.png", root / "crack" / "cross.png")  # inside the data folder: read, labelled crack
    os.mkfifo(root / "crack" / "pipe.png")
    os.symlink("gone.png", root / "crack" / "gone-link.png")
    os.symlink("loop.png", root / "crack" / "loop.png")
    write_image(root / "crack" / ".img_001.jpg", (32, 32), seed=4)
    (root / "crack" / ".DS_Store").write_bytes(b"litter")
    (root / "crack" / "Thumbs.db").write_bytes(b"litter")
    (root / "crack" / "._c1.png").write_bytes(b"litter")
    os.symlink("crack", root / "dent")  # a symlinked class folder is not followed
    os.symlink("loopdir", root / "loopdir")  # a top-level loop
    os.symlink(tmp_path, root / "up")  # a top-level link out of the data folder
    os.mkfifo(root / "toppipe")
    (root / "rust").mkdir()
    write_image(root / ".hidden_class" / "h1.png", (32, 32))
    (root / ".DS_Store").write_bytes(b"litter")
    return root


def test_folders_special_entries_are_quarantined_and_links_inside_are_read(special_folders: Path) -> None:
    root = special_folders
    with alarm(30):
        assert detect_format(root) == "folders"
        assert folder_classes(root) == {0: "ok", 1: "crack", 2: "rust"}
    result = run_ingest(root)
    assert result["classes"] == {"0": "ok", "1": "crack", "2": "rust"}
    manifest = {r["image_id"]: r for r in result["manifest"]}
    assert set(manifest) == {"ok/o1.png", "crack/c1.png", "crack/c2.png", "crack/c1-link.png", "crack/cross.png"}
    assert manifest["crack/cross.png"]["label_name"] == "crack"
    assert "symlink to ../ok/o1.png" in manifest["crack/cross.png"]["note"]

    reasons = reasons_by_name(result)
    expected = {
        "pipe.png": "named pipe (FIFO)",
        "gone-link.png": "dangling symlink",
        "loop.png": "symlink loop",
        ".img_001.jpg": "hidden file: not used; rename it to include it",
        "dent": "symlink to a folder",
        "loopdir": "symlink loop",
        "up": "outside the data folder",
        "toppipe": "named pipe (FIFO)",
        ".hidden_class": "hidden folder",
    }
    for name, fragment in expected.items():
        assert name in reasons, f"{name} not quarantined: {reasons}"
        assert fragment in reasons[name], (name, reasons[name])
    assert set(reasons) == set(expected)


def test_only_symlinked_class_folders_is_a_clear_error(tmp_path: Path) -> None:
    write_image(tmp_path / "real" / "crack" / "c.png", (32, 32))
    root = tmp_path / "plant"
    root.mkdir()
    os.symlink(tmp_path / "real" / "crack", root / "crack")
    os.symlink("loop", root / "loop")
    with pytest.raises(IngestError, match=r"cannot tell the layout.*symlink"):
        detect_format(root)
    with pytest.raises(IngestError, match=r"no class folders found.*crack"):
        folder_classes(root)


# ------------------------------------------------------------------------------------------ scan_dir


def test_scan_dir_sorts_entries_into_files_folders_and_quarantine(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "a.png", (8, 8))
    (root / "sub").mkdir()
    os.symlink("a.png", root / "b.png")
    os.symlink("sub", root / "c")
    os.mkfifo(root / "d.png")
    (root / "._a.png").write_bytes(b"x")
    (root / ".e.png").write_bytes(b"x")
    with alarm(10):
        scan = scan_dir(root, root)
    assert scan.files == {"a.png": root / "a.png", "b.png": root / "b.png"}
    assert scan.folders == {"sub": root / "sub"}
    assert {Path(q.file).name: q.image_id for q in scan.quarantine} == {"c": "c", "d.png": "d.png", ".e.png": ".e.png"}


def test_scan_dir_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    scan = scan_dir(tmp_path / "nope", tmp_path)
    assert (scan.files, scan.folders, scan.quarantine) == ({}, {}, [])
