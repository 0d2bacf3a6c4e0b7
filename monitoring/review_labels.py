"""Labelling the review queue: votes, disputes, and moving an image into the ``reviewed`` data source.

The pure part: :func:`tally` (one vote per reviewer, the latest counts) decides whether an entry stays ``queued``,
is ``disputed`` (its current votes differ) or is ``reviewed`` (``review_votes`` votes, all agreeing);
:func:`add_vote`, :func:`find_entry`, :func:`parse_label_csv` and :func:`plan` (a whole batch of labels checked and
folded before anything is written) never touch a file.

:class:`LabelDesk` applies them to a local review queue (``monitoring/review.py``) under an exclusive lock
(``<queue>/.lock``, ``fcntl``). An entry that reaches ``reviewed`` is finished in three steps, each atomic:

1. ``done/<sha256>.json`` is written (the entry with its votes, the class and where the image goes): the intent;
2. the queue's copy ``images/<sha256><ext>`` is renamed to ``<reviewed>/<class>/<sha256><ext>``;
3. ``queue/<sha256>.json`` is removed.

Every locked operation first rolls forward any entry a killed process left after step 1, so an image is always in
exactly one of the queue and ``reviewed``: never lost, never twice.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import getpass
import io
import json
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steelqc.monitoring.ledger import atomic_write_bytes, utc_now
from steelqc.tasks.config import Settings

log = logging.getLogger(__name__)

CSV_COLUMNS = ("image", "label", "reviewer")
MIN_PREFIX = 6
"""Shortest SHA-256 prefix that names a queued image."""
ORIGIN_KEYS = ("label", "split", "training_run", "monitoring_run", "model_version")
"""What an entry says of who queued it and what the data said (``monitoring/review.py``), shown when present."""


class LabelError(ValueError):
    """A label that cannot be applied; ``file`` and ``row`` say where it came from (CSV import)."""

    def __init__(self, message: str, file: str | None = None, row: int | None = None):
        super().__init__(message)
        self.file, self.row = file, row


@dataclass(frozen=True)
class LabelRow:
    """One label to apply: ``image`` names a queued image (hash, hash prefix, path or file name)."""

    image: str
    label: str
    reviewer: str
    row: int | None = None


# ------------------------------------------------------------------------------------------------ pure


def default_reviewer() -> str:
    """The OS user (``unknown`` when there is none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def tally(labels: Sequence[dict[str, Any]], votes_needed: int) -> tuple[str, str | None, dict[str, str]]:
    """``(status, class, votes)`` of an entry's ``labels`` (``{label, reviewer, at}`` each, oldest first).

    ``votes`` maps each reviewer to their latest label. ``status``: ``disputed`` when the votes differ,
    ``reviewed`` (with the agreed ``class``) when at least ``votes_needed`` votes agree and none differs, else
    ``queued``.
    """
    votes = {str(v["reviewer"]): str(v["label"]) for v in labels}
    agreed = set(votes.values())
    if len(agreed) > 1:
        return "disputed", None, votes
    if agreed and len(votes) >= votes_needed:
        return "reviewed", agreed.pop(), votes
    return "queued", None, votes


def add_vote(entry: dict[str, Any], label: str, reviewer: str, at: str, votes_needed: int) -> dict[str, Any]:
    """A copy of ``entry`` with the vote added and its ``status``, ``disputed`` and ``votes`` updated."""
    labels = [*entry.get("labels", []), {"label": label, "reviewer": reviewer, "at": at}]
    status, agreed, votes = tally(labels, votes_needed)
    out = {**entry, "labels": labels, "votes": votes, "status": status, "disputed": status == "disputed"}
    if agreed is not None:
        out["reviewed_as"], out["reviewed_at"] = agreed, at
    return out


def check_class(label: str, class_names: dict[int, str]) -> str:
    """``label`` when the settings know it, else a :class:`LabelError` listing the known classes."""
    names = [n for _, n in sorted(class_names.items())]
    if label not in names:
        raise LabelError(f"class {label!r} is not in the settings' class map ({', '.join(names)})")
    return label


def find_entry(entries: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    """The entry ``key`` names: its SHA-256 (or a prefix of at least 6 characters), its image path, its source uri
    or the file name of either; a :class:`LabelError` when none or several match."""
    key = key.strip()
    if key in entries:
        return entries[key]
    found = [
        e
        for sha, e in entries.items()
        if (len(key) >= MIN_PREFIX and sha.startswith(key.lower()))
        or key in (str(e.get("image")), str(e.get("source_uri")))
        or key in (Path(str(e.get("image"))).name, str(e.get("source_uri")).rsplit("/", 1)[-1])
    ]
    if not found:
        raise LabelError(f"image {key!r} is not in the review queue")
    if len(found) > 1:
        shas = ", ".join(e["sha256"][:12] for e in found)
        raise LabelError(f"image {key!r} names {len(found)} queued images ({shas}): give its SHA-256")
    return found[0]


def read_label_file(path: Path, max_bytes: int) -> str:
    """The text of a label CSV, read only when it is a regular file of at most ``max_bytes`` (``max_csv_bytes``);
    a :class:`LabelError` naming the file otherwise, or when it cannot be read or is not UTF-8."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise LabelError(f"{path}: not a regular file, not read", str(path))
        if st.st_size > max_bytes:
            raise LabelError(f"{path}: {st.st_size} bytes, over max_csv_bytes ({max_bytes}): refused unread", str(path))
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})", str(path)) from None


def parse_label_csv(text: str, file: str) -> list[LabelRow]:
    """The rows of a label CSV (header ``image,label,reviewer``); a bad header or row is a :class:`LabelError`
    naming the file and row (1 = the header)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != list(CSV_COLUMNS):
        raise LabelError(f"{file}: the header must be {','.join(CSV_COLUMNS)}, got {header}", file, 1)
    rows = []
    for number, fields in enumerate(reader, start=2):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(CSV_COLUMNS):
            raise LabelError(f"{file}, row {number}: {len(fields)} fields, expected 3 (image,label,reviewer)",
                             file, number)  # fmt: skip
        image, label, reviewer = (f.strip() for f in fields)
        for name, value in zip(CSV_COLUMNS, (image, label, reviewer), strict=True):
            if not value:
                raise LabelError(f"{file}, row {number}: {name} is empty", file, number)
        rows.append(LabelRow(image, label, reviewer, number))
    if not rows:
        raise LabelError(f"{file}: no label rows", file, None)
    return rows


def plan(
    entries: dict[str, dict[str, Any]],
    rows: Sequence[LabelRow],
    class_names: dict[int, str],
    votes_needed: int,
    at: str,
    file: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Every changed entry (by hash) after applying ``rows`` in order; the first bad row raises a
    :class:`LabelError` (naming ``file`` and the row) and nothing is planned."""
    state = dict(entries)
    changed: dict[str, dict[str, Any]] = {}
    for row in rows:
        where = f"{file}, row {row.row}: " if file else ""
        try:
            check_class(row.label, class_names)
            entry = find_entry(state, row.image)
        except LabelError as exc:
            raise LabelError(f"{where}{exc}", file, row.row) from exc
        new = add_vote(entry, row.label, row.reviewer, at, votes_needed)
        changed[new["sha256"]] = new
        if new["status"] == "reviewed":
            state.pop(new["sha256"])  # a later row naming it finds it no longer queued
        else:
            state[new["sha256"]] = new
    return changed


# -------------------------------------------------------------------------------------------- the desk


class LabelDesk:
    """Labels a local review queue (``root``: ``queue/``, ``images/``, ``done/``) into ``reviewed`` class folders."""

    def __init__(self, root: Path, reviewed: Path, settings: Settings):
        self.root, self.reviewed, self.settings = root, reviewed, settings

    @classmethod
    def open(cls, settings: Settings) -> LabelDesk:
        target = settings.review_queue
        if "://" in target:
            raise LabelError(f"review queue {target}: labelling needs a local folder (review_dir)")
        root = Path(target).expanduser().absolute()
        return cls(root, settings.reviewed_dir.expanduser().absolute(), settings)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The queue's exclusive lock (waits up to ``lock_timeout_s``); pending moves are finished first."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            deadline = time.monotonic() + self.settings.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LabelError(f"review queue {self.root} is locked by another process") from None
                    time.sleep(0.05)
            try:
                self._roll_forward()
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------------------------------------ reading

    def _read_dir(self, name: str) -> dict[str, dict[str, Any]]:
        folder, out = self.root / name, {}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                entry = json.loads(path.read_bytes())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                log.warning("review queue %s: %s is not an entry (%s), skipped", self.root, path.name, exc)
                continue
            if isinstance(entry, dict) and entry.get("sha256") == path.stem:
                out[path.stem] = entry
            else:
                log.warning("review queue %s: %s is not an entry, skipped", self.root, path.name)
        return out

    def queued(self) -> dict[str, dict[str, Any]]:
        """The queued entries by hash (those already done excluded), oldest first."""
        done = set(self._read_dir("done"))
        entries = {s: e for s, e in self._read_dir("queue").items() if s not in done}
        return dict(sorted(entries.items(), key=lambda kv: (str(kv[1].get("queued_at", "")), kv[0])))

    def done(self) -> dict[str, dict[str, Any]]:
        """The reviewed entries by hash."""
        return self._read_dir("done")

    def counts(self) -> dict[str, int]:
        """``queued``, ``reviewed`` and ``disputed`` (queued entries whose votes differ)."""
        queued = self.queued()
        disputed = sum(1 for e in queued.values() if e.get("disputed"))
        return {"queued": len(queued), "reviewed": len(self.done()), "disputed": disputed}

    # ------------------------------------------------------------------------------------------ writing

    def apply(self, rows: Sequence[LabelRow], file: str | None = None) -> list[dict[str, Any]]:
        """Apply ``rows`` all or nothing (checked against the queue under the lock first); the changed entries."""
        with self.locked():
            changed = plan(self.queued(), rows, self.settings.class_names, self.settings.review_votes, utc_now(), file)
            return [self._commit(entry) for entry in changed.values()]

    def _commit(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Write a changed entry: back into the queue, or (reviewed) through the three steps; the entry written."""
        sha = entry["sha256"]
        if entry["status"] != "reviewed":
            atomic_write_bytes(self.root / "queue" / f"{sha}.json", json.dumps(entry, indent=1).encode())
            return entry
        source = Path(str(entry["image"]))
        entry = {**entry, "reviewed_image": str(self.reviewed / entry["reviewed_as"] / f"{sha}{source.suffix}")}
        atomic_write_bytes(self.root / "done" / f"{sha}.json", json.dumps(entry, indent=1).encode())
        self._finish(entry)
        log.info("reviewed %s as %s: %s", sha[:12], entry["reviewed_as"], entry["reviewed_image"])
        return entry

    def _finish(self, entry: dict[str, Any]) -> None:
        """Steps 2 and 3 of the module docstring (idempotent)."""
        source, target = Path(str(entry["image"])), Path(entry["reviewed_image"])
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                atomic_write_bytes(target, source.read_bytes())  # another file system: copy, then remove
                source.unlink()
        (self.root / "queue" / f"{entry['sha256']}.json").unlink(missing_ok=True)

    def _roll_forward(self) -> None:
        """Finish the moves a killed process left after writing ``done/`` (module docstring)."""
        for sha, entry in self.done().items():
            if (self.root / "queue" / f"{sha}.json").exists() or Path(str(entry["image"])).exists():
                log.warning("review queue %s: finishing the interrupted move of %s", self.root, sha[:12])
                self._finish(entry)


def summary_of(entry: dict[str, Any]) -> dict[str, Any]:
    """What `steelqc review` shows of an entry: who queued it (``monitoring_run`` or ``training_run``, and
    ``model_version``) and, for a training run's, the class the data gives (``label``) and the ``split``, when
    known."""
    keys = ("sha256", "image", "source_uri", "predicted", "confidence", "reasons", "status", "votes", "queued_at")
    out = {k: entry.get(k) for k in keys}
    out |= {k: entry[k] for k in ORIGIN_KEYS if entry.get(k) is not None}
    out["status"] = out["status"] or "queued"
    out["votes"] = out["votes"] or {}
    if entry.get("reviewed_as"):
        out["reviewed_as"], out["reviewed_image"] = entry["reviewed_as"], entry.get("reviewed_image")
    return out


__all__ = [
    "LabelDesk",
    "LabelError",
    "LabelRow",
    "add_vote",
    "check_class",
    "default_reviewer",
    "find_entry",
    "parse_label_csv",
    "plan",
    "summary_of",
    "tally",
]
