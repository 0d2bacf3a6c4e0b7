"""The monitoring inbox (local folders) and the ledger of processed images: listing, hashing, dedupe, atomic save."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from steelqc.monitoring.inbox import InboxError, InboxItem, LocalInbox, open_inbox, sha256_of
from steelqc.monitoring.ledger import Duplicate, Ledger, LedgerError, unreadable_key
from steelqc.tasks.config import Settings
from tests.helpers import alarm, write_image


def png(path: Path, seed: int = 0) -> Path:
    """A tiny PNG (same seed, same bytes)."""
    return write_image(path, (8, 8), "PNG", seed=seed)


def counting_hasher(inbox: LocalInbox, into: Path, calls: list[str]):
    def hasher(item: InboxItem) -> str:
        calls.append(item.name)
        return sha256_of(inbox.fetch(item, into))

    return hasher


# --------------------------------------------------------------------------------------------- the inbox


def test_local_inbox_lists_only_visible_images_sorted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "inbox"
    for name in ["b.png", "A.JPG", "c.TIFF", "d.jpeg", "e.bmp", "f.tif", "sub/g.png"]:
        png(root / name)
    for name in [".hidden.png", ".c.png.tmp", ".cache/h.png", "notes.txt", "noext", "img.png.part"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "folder.png").mkdir()  # a folder with an image name is not a file

    inbox = open_inbox(str(root), Settings())
    items = inbox.list_items()

    names = ["A.JPG", "b.png", "c.TIFF", "d.jpeg", "e.bmp", "f.tif", "g.png"]
    assert [i.name for i in items] == names
    assert [i.uri for i in items] == sorted(i.uri for i in items)
    assert items[-1].uri == str(root.absolute() / "sub" / "g.png")
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "3 file(s) without an image extension" in warning, "left out, but never silently"
    assert "notes.txt" in warning and "noext" in warning and ".hidden" not in warning
    first = items[0]
    st = os.stat(first.uri)
    assert (first.size, first.stamp) == (st.st_size, str(st.st_mtime_ns))
    assert inbox.describe() == str(root.absolute())


def test_local_fetch_returns_the_file_itself(tmp_path: Path) -> None:
    path = png(tmp_path / "inbox" / "a.png")
    inbox = open_inbox(str(tmp_path / "inbox"), Settings())
    into = tmp_path / "work"
    [item] = inbox.list_items()
    assert inbox.fetch(item, into) == path.absolute()
    assert not into.exists() or not any(into.iterdir())  # never copied
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_open_inbox_creates_a_missing_folder_and_refuses_bad_sources(tmp_path: Path) -> None:
    inbox = open_inbox(str(tmp_path / "new" / "inbox"), Settings())
    assert (tmp_path / "new" / "inbox").is_dir()
    assert inbox.list_items() == []

    (tmp_path / "file").write_text("x")
    with pytest.raises(InboxError, match=r"file.*not a folder"):
        open_inbox(str(tmp_path / "file"), Settings())
    with pytest.raises(InboxError, match=r"gs://bucket/x.*unsupported scheme"):
        open_inbox("gs://bucket/x", Settings())


def test_special_files_are_listed_and_refused_by_fetch(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    target = png(tmp_path / "outside.png")
    root.mkdir()
    (root / "link.png").symlink_to(target)
    os.mkfifo(root / "pipe.png")
    inbox = open_inbox(str(root), Settings())

    items = {i.name: i for i in inbox.list_items()}
    assert set(items) == {"link.png", "pipe.png"}
    with alarm(5):
        with pytest.raises(InboxError, match=r"link\.png: symlink"):
            inbox.fetch(items["link.png"], tmp_path / "work")
        with pytest.raises(InboxError, match=r"pipe\.png: named pipe"):
            inbox.fetch(items["pipe.png"], tmp_path / "work")


def test_fetch_refuses_a_file_over_the_size_limit(tmp_path: Path) -> None:
    path = png(tmp_path / "inbox" / "a.png")
    inbox = open_inbox(str(tmp_path / "inbox"), Settings(max_image_bytes=path.stat().st_size - 1))
    [item] = inbox.list_items()
    with pytest.raises(InboxError, match=r"a\.png.*max_image_bytes"):
        inbox.fetch(item, tmp_path)


# -------------------------------------------------------------------------------------------- the ledger


def test_pending_dedupes_by_hash_in_order(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    png(root / "a.png", seed=1)
    png(root / "b.png", seed=2)
    png(root / "c.png", seed=1)  # same content as a.png
    png(root / "d.png", seed=1)
    inbox = open_inbox(str(root), Settings())
    items = inbox.list_items()
    ledger = Ledger.load(tmp_path / "ledger.json")

    new, duplicates = ledger.pending(items, counting_hasher(inbox, tmp_path, []))

    assert [(i.name, sha) for i, sha in new] == [
        ("a.png", sha256_of(root / "a.png")),
        ("b.png", sha256_of(root / "b.png")),
    ]
    sha_a = new[0][1]
    assert duplicates == [Duplicate(items[2], sha_a, items[0].uri), Duplicate(items[3], sha_a, items[0].uri)]


def test_hashes_are_cached_by_uri_size_and_stamp_across_saves(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    png(root / "a.png", seed=1)
    png(root / "b.png", seed=2)
    inbox = open_inbox(str(root), Settings())
    calls: list[str] = []
    path = tmp_path / "ledger.json"
    ledger = Ledger.load(path)
    ledger.pending(inbox.list_items(), counting_hasher(inbox, tmp_path, calls))
    assert calls == ["a.png", "b.png"]
    ledger.save()

    calls.clear()
    again = Ledger.load(path)
    new, _ = again.pending(inbox.list_items(), counting_hasher(inbox, tmp_path, calls))
    assert calls == []  # unchanged files are not read again
    assert [i.name for i, _ in new] == ["a.png", "b.png"]  # but still pending: nothing was recorded

    png(root / "b.png", seed=3)
    os.utime(root / "b.png", ns=(1, 1))  # a different stamp even on a coarse clock
    new, _ = again.pending(inbox.list_items(), counting_hasher(inbox, tmp_path, calls))
    assert calls == ["b.png"]
    assert dict((i.name, sha) for i, sha in new)["b.png"] == sha256_of(root / "b.png")


def test_recorded_content_is_never_pending_again(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    png(root / "a.png", seed=1)
    png(root / "b.png", seed=2)
    png(root / "dup.png", seed=1)
    inbox = open_inbox(str(root), Settings())
    path = tmp_path / "monitoring" / "ledger.json"
    ledger = Ledger.load(path)
    new, duplicates = ledger.pending(inbox.list_items(), counting_hasher(inbox, tmp_path, []))
    (a, sha_a), (b, sha_b) = new
    ledger.record(
        [
            {"sha256": sha_a, "uri": a.uri, "status": "processed", "run": "r1"},
            {"sha256": sha_b, "uri": b.uri, "status": "quarantined", "reason": "unsupported mode", "run": "r1"},
            {"sha256": duplicates[0].sha256, "uri": duplicates[0].item.uri, "status": "duplicate", "run": "r1"},
        ]
    )
    ledger.save()

    png(root / "later-copy.png", seed=1)  # known content under a new name
    png(root / "fresh.png", seed=4)
    reloaded = Ledger.load(path)
    new, duplicates = reloaded.pending(inbox.list_items(), counting_hasher(inbox, tmp_path, []))
    assert [i.name for i, _ in new] == ["fresh.png"]
    assert duplicates == []
    assert reloaded.is_processed(sha_a) and reloaded.is_processed(sha_b)
    entry = reloaded.status(sha_a)
    assert entry is not None
    assert (entry["status"], entry["uri"], entry["run"]) == ("processed", a.uri, "r1")
    assert [c["uri"] for c in entry["copies"]] == [str(root.absolute() / "dup.png")]
    assert entry["time"].endswith("+00:00")
    assert reloaded.status(sha_b)["reason"] == "unsupported mode"  # type: ignore[index]
    assert len(reloaded) == 2  # one entry per content, the duplicate is a copy of a.png

    reloaded.record([{"sha256": sha_a, "uri": a.uri, "status": "processed", "run": "r2"}])
    assert reloaded.status(sha_a)["run"] == "r1"  # type: ignore[index]
    assert len(reloaded.status(sha_a)["copies"]) == 1  # type: ignore[index]


def test_unhashable_items_go_to_on_error_and_stay_quarantined(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    png(root / "a.png")
    os.mkfifo(root / "pipe.png")
    inbox = open_inbox(str(root), Settings())
    items = inbox.list_items()
    ledger = Ledger.load(tmp_path / "ledger.json")
    hasher = counting_hasher(inbox, tmp_path, [])

    with alarm(5), pytest.raises(InboxError, match=r"pipe\.png"):
        ledger.pending(items, hasher)
    failed: list[tuple[str, str]] = []
    new, _ = ledger.pending(items, hasher, on_error=lambda item, exc: failed.append((item.name, str(exc))))
    assert [i.name for i, _ in new] == ["a.png"]
    assert [name for name, _ in failed] == ["pipe.png"] and "named pipe" in failed[0][1]

    pipe = items[1]
    ledger.record(
        [{"sha256": unreadable_key(pipe), "uri": pipe.uri, "status": "quarantined", "reason": "FIFO", "run": "r"}]
    )
    failed.clear()
    ledger.pending(items, hasher, on_error=lambda item, exc: failed.append((item.name, str(exc))))
    assert failed == []  # skipped without reading until the file changes


def test_record_checks_every_entry_before_adding_any(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path / "ledger.json")
    good = {"sha256": "a" * 64, "uri": "/x/a.png", "status": "processed", "run": "r"}
    for bad, message in [
        ({"sha256": "b" * 64, "uri": "/x/b.png", "status": "quarantined", "run": "r"}, "no reason"),
        ({"sha256": "c" * 64, "uri": "/x/c.png", "status": "done", "run": "r"}, "status 'done'"),
        ({"sha256": "not-a-hash", "uri": "/x/d.png", "status": "processed", "run": "r"}, "not a SHA-256"),
        ({"sha256": "e" * 64, "uri": "/x/e.png", "status": "processed"}, "lacks"),
    ]:
        with pytest.raises(LedgerError, match=message):
            ledger.record([good, bad])
        assert not ledger.is_processed("a" * 64)


@pytest.mark.parametrize(
    "content",
    ["{not json", "", "[]", '{"version": 1, "images": {}}', '{"version": 1, "images": {"x": 1}, "hashes": {}}'],
)
def test_a_corrupt_ledger_raises_naming_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(LedgerError, match=re.escape(str(path))):
        Ledger.load(path)
    assert path.read_text() == content  # never reset


def test_a_failed_save_leaves_the_old_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger.load(path)
    ledger.record([{"sha256": "a" * 64, "uri": "/x/a.png", "status": "processed", "run": "r1"}])
    ledger.save()
    before = path.read_bytes()
    assert json.loads(before)["images"]["a" * 64]["status"] == "processed"

    ledger.record([{"sha256": "b" * 64, "uri": "/x/b.png", "status": "processed", "run": "r2"}])

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space"):
        patch.setattr(os, "fsync", disk_full)
        ledger.save()

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]  # no temporary file left
    ledger.save()
    assert set(json.loads(path.read_text())["images"]) == {"a" * 64, "b" * 64}
