"""The ledger of images the monitor has decided on, keyed by content hash (SHA-256).

One JSON file (e.g. ``STEELQC_HOME/monitoring/ledger.json``)::

    {"version": 1,
     "images": {"<sha256>": {"sha256", "uri", "status", "reason", "run", "time", "copies": [...]}},
     "hashes": {"<uri>": {"size", "stamp", "sha256"}}}

``images`` holds one entry per content: status ``processed``, ``quarantined`` (with a ``reason``) or, for a
content seen only as a second copy, ``duplicate``; a later copy of known content is appended to ``copies``.
``hashes`` caches each listed file's hash by (uri, size, stamp) so unchanged files are not hashed again.

The flow calls :meth:`Ledger.record` and :meth:`Ledger.save` only once a whole batch is decided: a monitor killed
mid-batch leaves the file as it was and the next run takes the same images again. :meth:`Ledger.save` writes a
temporary file in the same folder, fsyncs it and renames it into place, so the file is always the old or the new
ledger, never a mix. A file that is not a ledger raises :class:`LedgerError`; it is never silently reset (that
would process every image again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from steelqc.monitoring.inbox import InboxError, InboxItem

log = logging.getLogger(__name__)

VERSION = 1
STATUSES = frozenset({"processed", "quarantined", "duplicate"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
UNREADABLE_PREFIX = "unreadable:"


class LedgerError(ValueError):
    """A ledger file that cannot be read or a malformed entry; the message names the file."""


class Duplicate(NamedTuple):
    """A second copy (``item``) of content already in the batch, first seen at ``first_uri``."""

    item: InboxItem
    sha256: str
    first_uri: str


def utc_now() -> str:
    """The current time as ISO 8601 UTC (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def unreadable_key(item: InboxItem) -> str:
    """The ledger key of a file whose content could not be hashed (FIFO, symlink, vanished): by uri, size, stamp.

    Record a quarantine under this key (``sha256=unreadable_key(item)``) and :meth:`Ledger.pending` skips the
    file until it changes.
    """
    tag = hashlib.sha256(f"{item.uri}\0{item.size}\0{item.stamp}".encode()).hexdigest()
    return f"{UNREADABLE_PREFIX}{tag}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsynced, then ``os.replace``.

    On any failure the temporary file is removed and ``path`` keeps its old content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(dir_fd)


class Ledger:
    """The processed-images ledger at ``path``; see the module docstring."""

    def __init__(self, path: Path, images: dict[str, dict[str, Any]] | None = None, hashes: dict | None = None):
        self.path = Path(path)
        self._images: dict[str, dict[str, Any]] = images or {}
        self._hashes: dict[str, dict[str, Any]] = hashes or {}

    # ------------------------------------------------------------------------------------------- file

    @classmethod
    def load(cls, path: Path | str) -> Ledger:
        """The ledger at ``path``; a missing file is an empty ledger, a corrupt one raises :class:`LedgerError`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"ledger {path} cannot be read: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LedgerError(
                f"ledger {path} is corrupt ({exc}); restore it or move it away (a new ledger processes every "
                "image in the inbox again)"
            ) from exc
        found = data.get("version") if isinstance(data, dict) else None
        if isinstance(found, int) and found > VERSION:
            raise LedgerError(
                f"ledger {path} has version {found}, written by a newer steelqc; this one reads version {VERSION}: "
                "upgrade steelqc (the ledger is left as it is)"
            )
        if (
            not isinstance(data, dict)
            or data.get("version") != VERSION
            or not isinstance(data.get("images"), dict)
            or not isinstance(data.get("hashes"), dict)
            or not all(isinstance(e, dict) and e.get("status") in STATUSES for e in data["images"].values())
            or not all(isinstance(h, dict) and isinstance(h.get("sha256"), str) for h in data["hashes"].values())
        ):
            raise LedgerError(
                f"ledger {path} is not a steelqc ledger (version {VERSION} with 'images' and 'hashes'); "
                "restore it or move it away"
            )
        return cls(path, data["images"], data["hashes"])

    def save(self) -> None:
        """Write the ledger atomically (temporary file, fsync, rename); the old file survives any failure."""
        data = {"version": VERSION, "images": self._images, "hashes": self._hashes}
        atomic_write_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        log.debug("ledger %s saved: %d images, %d cached hashes", self.path, len(self._images), len(self._hashes))

    # ----------------------------------------------------------------------------------------- hashes

    def seen_hash(self, item: InboxItem) -> str | None:
        """The cached hash of ``item`` when its uri was hashed before with the same size and stamp."""
        cached = self._hashes.get(item.uri)
        if cached and cached.get("size") == item.size and cached.get("stamp") == item.stamp:
            return str(cached["sha256"])
        return None

    def remember_hash(self, item: InboxItem, sha256: str) -> None:
        """Cache ``item``'s hash (kept on :meth:`save`)."""
        self._hashes[item.uri] = {"size": item.size, "stamp": item.stamp, "sha256": sha256}

    def prune_hashes(self, listed: Iterable[InboxItem]) -> int:
        """Forget cached hashes of uris no longer listed; returns how many were dropped."""
        keep = {item.uri for item in listed}
        gone = [uri for uri in self._hashes if uri not in keep]
        for uri in gone:
            del self._hashes[uri]
        return len(gone)

    # ---------------------------------------------------------------------------------------- entries

    def is_processed(self, sha256: str) -> bool:
        """Whether the content was decided on before (processed, quarantined or duplicate): never take it again."""
        return sha256 in self._images

    def status(self, sha256: str) -> dict[str, Any] | None:
        """A copy of the entry of ``sha256`` (``status``, ``uri``, ``run``, ``time``, ...), None when unknown."""
        entry = self._images.get(sha256)
        return json.loads(json.dumps(entry)) if entry is not None else None

    def __len__(self) -> int:
        return len(self._images)

    def record(self, entries: list[dict[str, Any]]) -> None:
        """Add the decisions of a batch (in memory; :meth:`save` writes them).

        Each entry: ``sha256``, ``uri``, ``status`` (processed | quarantined | duplicate), ``reason`` (required
        for quarantined), ``run``, ``time`` (ISO UTC; now when missing); other keys are kept. Content already in
        the ledger keeps its first entry and gets the new uri appended to ``copies``, so an image is never in the
        ledger twice. All entries are checked before any is added: a malformed one raises :class:`LedgerError`
        and adds nothing.
        """
        checked = [self._check(entry) for entry in entries]
        # first copies before second ones, so a duplicate lands on the entry of the content it copies
        for entry in sorted(checked, key=lambda e: e["status"] == "duplicate"):
            sha = entry["sha256"]
            existing = self._images.get(sha)
            if existing is None:
                if entry["status"] == "duplicate":
                    log.warning("ledger: %s recorded as a duplicate of content not in the ledger", entry["uri"])
                self._images[sha] = {**entry, "copies": []}
            elif existing["uri"] != entry["uri"] and all(c["uri"] != entry["uri"] for c in existing["copies"]):
                copy = {k: entry[k] for k in ("uri", "status", "run", "time")}
                existing["copies"].append(copy)

    def _check(self, entry: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in ("sha256", "uri", "status", "run") if not entry.get(k)]
        if missing:
            raise LedgerError(f"ledger {self.path}: entry {entry!r} lacks {missing}")
        sha = str(entry["sha256"])
        if not (_SHA256.match(sha) or sha.startswith(UNREADABLE_PREFIX)):
            raise LedgerError(f"ledger {self.path}: {sha!r} is not a SHA-256 hex digest ({entry['uri']})")
        if entry["status"] not in STATUSES:
            raise LedgerError(f"ledger {self.path}: status {entry['status']!r} is not one of {sorted(STATUSES)}")
        if entry["status"] == "quarantined" and not entry.get("reason"):
            raise LedgerError(f"ledger {self.path}: quarantined entry for {entry['uri']} has no reason")
        return {**entry, "sha256": sha, "reason": entry.get("reason"), "time": entry.get("time") or utc_now()}

    # ---------------------------------------------------------------------------------------- pending

    def pending(
        self,
        items: Iterable[InboxItem],
        hasher: Callable[[InboxItem], str],
        on_error: Callable[[InboxItem, Exception], None] | None = None,
    ) -> tuple[list[tuple[InboxItem, str]], list[Duplicate]]:
        """Split listed ``items`` into new content and in-batch duplicates, in the order given.

        ``new``: (item, sha256) whose hash the ledger does not hold yet, one per content; ``duplicates``: later
        items with the content of an earlier one in ``new`` (:class:`Duplicate`, with the first copy's uri).
        Items whose content the ledger holds already are left out of both. Hashes come from the cache when the
        uri's size and stamp are unchanged, else from ``hasher(item)`` (and are cached). An item whose
        :func:`unreadable_key` is in the ledger is skipped without hashing. When ``hasher`` raises
        ``InboxError`` or ``OSError``: with ``on_error`` the item is passed to it and left out, else it raises.
        """
        new: list[tuple[InboxItem, str]] = []
        duplicates: list[Duplicate] = []
        first_uri: dict[str, str] = {}
        for item in items:
            sha = self.seen_hash(item)
            if sha is None:
                if self.is_processed(unreadable_key(item)):
                    continue
                try:
                    sha = hasher(item)
                except (InboxError, OSError) as exc:
                    if on_error is None:
                        raise
                    on_error(item, exc)
                    continue
                self.remember_hash(item, sha)
            if self.is_processed(sha):
                continue
            if sha in first_uri:
                duplicates.append(Duplicate(item, sha, first_uri[sha]))
                continue
            first_uri[sha] = item.uri
            new.append((item, sha))
        return new, duplicates
