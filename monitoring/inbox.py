"""Where new factory images arrive: a local folder or an S3 prefix (``s3://bucket/prefix``).

An :class:`Inbox` lists the image files waiting in it (:class:`InboxItem`, sorted by uri) and fetches one to a
local path the decoder can read. Listing never reads or follows a file: a symlink, FIFO or device with an image
extension is listed like any other file, and :meth:`Inbox.fetch` refuses it with :class:`InboxError` naming it
(the monitoring flow quarantines it). Only image extensions (:data:`IMAGE_EXTENSIONS`, any case) are listed;
hidden files and folders (a leading ``.``, which covers the temporary files steelqc writes) are skipped, and so
are folder markers in S3.

S3 is read only through boto3, with ``endpoint_url=settings.s3_endpoint_url`` (None: AWS).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from steelqc.tasks.config import Settings
from steelqc.tasks.data.imageio import file_kind, open_regular_file

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
"""File extensions an inbox lists (compared in lower case)."""
_CHUNK = 1 << 20
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class InboxError(ValueError):
    """An inbox that cannot be opened or an item that cannot be fetched; the message names the source or file."""


@dataclass(frozen=True)
class InboxItem:
    """One file waiting in an inbox.

    ``uri``: absolute local path or ``s3://bucket/key``; ``name``: the file name; ``size``: bytes as listed;
    ``stamp``: what changes when the content may have (``st_mtime_ns`` of a file, the ETag of an S3 object).
    """

    uri: str
    name: str
    size: int
    stamp: str


def is_listed_name(name: str) -> bool:
    """Whether a file called ``name`` is an inbox image: not hidden, with an image extension."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def warn_unlisted(source: str, names: list[str]) -> None:
    """Say which visible files an inbox left out for their names (never silently: a camera that writes another
    extension must be noticed, not ignored)."""
    if names:
        shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
        log.warning(
            "%s: %d file(s) without an image extension (%s) not monitored: %s",
            source, len(names), "/".join(sorted(IMAGE_EXTENSIONS)), shown,
        )  # fmt: skip


def sha256_of(path: Path) -> str:
    """SHA-256 (hex) of a regular file's content; a FIFO, device or folder raises ``NotRegularFile``."""
    digest = hashlib.sha256()
    with open_regular_file(path) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (``bucket``, ``some/key``); raises :class:`InboxError` without a bucket."""
    if not uri.startswith("s3://"):
        raise InboxError(f"{uri}: not an s3:// uri")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InboxError(f"{uri}: no bucket in the s3:// uri (expected s3://bucket/prefix)")
    return bucket, key


def s3_client(settings: Settings) -> BaseClient:
    """A boto3 S3 client for ``settings.s3_endpoint_url`` (None: AWS), failing fast on an unreachable server."""
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def check_bucket(client: BaseClient, source: str, settings: Settings, what: str = "inbox") -> None:
    """Raise :class:`InboxError` naming ``source`` unless its bucket exists and answers."""
    bucket, _ = parse_s3_uri(source)
    where = settings.s3_endpoint_url or "AWS S3"
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise InboxError(f"{what} {source}: bucket {bucket!r} does not exist on {where}") from exc
        raise InboxError(f"{what} {source}: bucket {bucket!r} on {where} refused access ({code or exc})") from exc
    except BotoCoreError as exc:  # unreachable endpoint, no credentials, bad URL
        raise InboxError(f"{what} {source}: S3 at {where} cannot be reached ({exc})") from exc


def safe_local_name(item: InboxItem) -> str:
    """A file name for a fetched copy: unique per uri (hash prefix), no path separators or odd characters."""
    tag = hashlib.sha256(item.uri.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", item.name).lstrip(".")[-100:] or "image"
    return f"{tag}_{name}"


class Inbox(ABC):
    """A place new images arrive; see the module docstring."""

    @abstractmethod
    def list_items(self) -> list[InboxItem]:
        """The image files waiting, sorted by uri."""

    @abstractmethod
    def fetch(self, item: InboxItem, into: Path) -> Path:
        """A local path holding ``item``'s bytes (a download goes under ``into``); :class:`InboxError` if not."""

    @abstractmethod
    def describe(self) -> str:
        """The source, for logs and summaries."""


class LocalInbox(Inbox):
    """A local folder, scanned recursively; hidden and symlinked folders are not entered."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes

    def describe(self) -> str:
        return str(self.root)

    def list_items(self) -> list[InboxItem]:
        items: list[InboxItem] = []
        unlisted: list[str] = []
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if not is_listed_name(name):
                    unlisted += [] if name.startswith(".") else [os.path.join(folder, name)]
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)  # never follows a link, never opens a FIFO
                except FileNotFoundError:  # removed while listing
                    continue
                items.append(InboxItem(uri=path, name=name, size=st.st_size, stamp=str(st.st_mtime_ns)))
        warn_unlisted(self.describe(), unlisted)
        items.sort(key=lambda item: item.uri)
        return items

    def fetch(self, item: InboxItem, into: Path) -> Path:
        """The file itself (never copied), once it is known to be a regular file within the size limit."""
        path = Path(item.uri)
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise InboxError(f"{item.uri}: cannot be read ({exc.strerror or exc})") from exc
        if not stat.S_ISREG(st.st_mode):
            raise InboxError(f"{item.uri}: {file_kind(st.st_mode)}, not a regular file; not read")
        if st.st_size > self.max_bytes:
            raise InboxError(f"{item.uri}: {st.st_size} bytes, more than max_image_bytes ({self.max_bytes})")
        return path


class S3Inbox(Inbox):
    """Objects under ``s3://bucket/prefix/`` (recursively)."""

    def __init__(self, source: str, client: BaseClient, max_bytes: int):
        self.source = source.rstrip("/")
        self.bucket, prefix = parse_s3_uri(self.source)
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.client = client
        self.max_bytes = max_bytes

    def describe(self) -> str:
        return self.source

    def list_items(self) -> list[InboxItem]:
        items: list[InboxItem] = []
        unlisted: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key: str = obj["Key"]
                    rel = key[len(self.prefix) :]
                    if key.endswith("/") or any(part.startswith(".") for part in rel.split("/")[:-1]):
                        continue
                    name = rel.rsplit("/", 1)[-1]
                    if is_listed_name(name):
                        stamp = str(obj.get("ETag", "")).strip('"')
                        items.append(InboxItem(f"s3://{self.bucket}/{key}", name, int(obj["Size"]), stamp))
                    elif not name.startswith("."):
                        unlisted.append(f"s3://{self.bucket}/{key}")
            if not items and not unlisted and self.prefix:
                items = self._single_object()
        except (ClientError, BotoCoreError) as exc:
            raise InboxError(f"inbox {self.source}: listing failed ({exc})") from exc
        warn_unlisted(self.describe(), unlisted)
        items.sort(key=lambda item: item.uri)
        return items

    def _single_object(self) -> list[InboxItem]:
        """``s3://bucket/key.jpg`` names one object, not a prefix: that object when it exists, else nothing."""
        key = self.prefix.rstrip("/")
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return []
            raise
        name = key.rsplit("/", 1)[-1]
        stamp = str(head.get("ETag", "")).strip('"')
        return [InboxItem(f"s3://{self.bucket}/{key}", name, int(head["ContentLength"]), stamp)]

    def fetch(self, item: InboxItem, into: Path) -> Path:
        """Download to ``into/<safe name>`` (atomically); the object must still have the listed ETag."""
        bucket, key = parse_s3_uri(item.uri)
        if item.size > self.max_bytes:
            raise InboxError(f"{item.uri}: {item.size} bytes, more than max_image_bytes ({self.max_bytes})")
        into.mkdir(parents=True, exist_ok=True)
        target = into / safe_local_name(item)
        fd, tmp = tempfile.mkstemp(dir=into, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                extra = {"IfMatch": f'"{item.stamp}"'} if item.stamp else {}
                body = self.client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
                written = 0
                while chunk := body.read(_CHUNK):
                    written += len(chunk)
                    if written > self.max_bytes:
                        raise InboxError(f"{item.uri}: more than max_image_bytes ({self.max_bytes}) bytes")
                    out.write(chunk)
            os.replace(tmp, target)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("412", "PreconditionFailed"):
                raise InboxError(f"{item.uri}: changed since it was listed (ETag {item.stamp})") from exc
            raise InboxError(f"{item.uri}: download failed ({code or exc})") from exc
        except BotoCoreError as exc:
            raise InboxError(f"{item.uri}: download failed ({exc})") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target


def open_inbox(source: str, settings: Settings) -> Inbox:
    """The inbox at ``source`` (a folder, created when missing, or ``s3://bucket/prefix``, checked to answer)."""
    match = _SCHEME.match(source)
    if match and match.group(1).lower() == "s3":
        client = s3_client(settings)
        check_bucket(client, source, settings)
        return S3Inbox(source, client, settings.max_image_bytes)
    if match:
        raise InboxError(f"inbox {source}: unsupported scheme {match.group(1)!r} (a folder or s3://bucket/prefix)")
    root = Path(source).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise InboxError(f"inbox {source}: exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InboxError(f"inbox {source}: cannot be created ({exc.strerror or exc})") from exc
    return LocalInbox(root, settings.max_image_bytes)
