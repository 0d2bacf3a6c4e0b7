"""A bounded two-tier cache of decoded images: least recently used in memory, and on disk across runs.

The nightly retraining decodes the same images every night, and a Severstal-size data set at full resolution does
not fit in memory. :class:`ImageCache` keeps decoded (and resized, possibly corrupted) uint8 images

* in memory, least recently used out once their bytes pass ``max_bytes_memory`` (0: no memory tier);
* on disk under ``root`` (default ``STEELQC_HOME/cache/images``), one ``.npy`` file per image in 256 shard
  folders, least recently used out once their bytes pass ``max_bytes_disk`` (0 or no root: no disk tier).

An entry is found by :class:`CacheKey`: the SHA-256 of the source file's bytes, the output height, width and
channels, the decoder version and any deterministic preprocessing applied before caching. Change any of them and
the old entry is simply never read again (and ages out).

Disk entries are written atomically (temporary file + ``os.replace``), read without pickle (the header is checked
for a uint8 array of the key's shape before ``np.load(allow_pickle=False)`` reads it), and a corrupt, truncated or
mismatched entry is logged, decoded again and replaced. Several processes may share one folder: a file that
vanishes between listing and reading is a miss, and each process evicts from a fresh listing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from steelqc.tasks.config import Settings
from steelqc.tasks.data.imageio import open_regular_file
from steelqc.tasks.fileio import atomic_write

log = logging.getLogger(__name__)

DECODER_VERSION = f"imageio-1+pillow-{PIL.__version__}"
"""Version of the pixels :func:`steelqc.tasks.data.imageio.decode_image` produces; part of every cache key.

Bump the number whenever ``tasks/data/imageio.py`` changes the pixels it returns. The Pillow version is included
because Pillow's bundled libjpeg decides the exact JPEG pixels. (It may move into ``imageio.py`` itself.)
"""
KEY_SCHEMA = 1
"""Version of the key's own layout (the fields hashed by :meth:`CacheKey.digest`)."""
ENTRY_SUFFIX = ".npy"
STALE_TMP_S = 3600.0
"""Temporary files older than this are leftovers of a crashed writer and are removed when the folder is listed."""
EVICT_TO = 0.9
"""Disk eviction goes down to this share of ``max_bytes_disk``, so a listing happens once per 10% written."""
_MAX_HEADER = 4096


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a regular file's bytes (FIFOs and devices are refused, never read)."""
    with open_regular_file(path) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What a cached image depends on; :meth:`digest` is its stable name.

    ``preprocessing``: names (with versions and parameters) of every deterministic step applied between decoding
    and caching, in order, e.g. ``("resize:area", "corruption:glare-v2")``; an empty tuple means decoded only.
    """

    content_sha256: str
    height: int
    width: int
    channels: int = 1
    decoder_version: str = DECODER_VERSION
    preprocessing: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        sha = self.content_sha256
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"content_sha256 must be 64 lower-case hex digits, got {sha!r}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not self.decoder_version:
            raise ValueError("decoder_version must not be empty")
        object.__setattr__(self, "preprocessing", tuple(self.preprocessing))
        if not all(isinstance(step, str) and step for step in self.preprocessing):
            raise ValueError(f"preprocessing must be non-empty strings, got {self.preprocessing!r}")

    @classmethod
    def for_file(
        cls,
        path: str | Path,
        height: int,
        width: int,
        channels: int = 1,
        preprocessing: Sequence[str] = (),
        decoder_version: str = DECODER_VERSION,
    ) -> CacheKey:
        """The key of the image file ``path`` (its bytes hashed) cached at ``height`` x ``width``."""
        return cls(file_sha256(path), height, width, channels, decoder_version, tuple(preprocessing))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the cached array: ``(height, width)`` grey or ``(height, width, 3)``."""
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, 3)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached uint8 array."""
        return self.height * self.width * self.channels

    def digest(self) -> str:
        """Hex SHA-256 of the key's fields (canonical JSON): the same on every machine and Python version."""
        fields = {
            "schema": KEY_SCHEMA,
            "sha256": self.content_sha256,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "decoder": self.decoder_version,
            "preprocessing": list(self.preprocessing),
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class CorruptEntry(ValueError):
    """A disk entry that is not a uint8 .npy array of the key's shape (truncated, foreign, pickled, ...)."""


def _read_entry(path: Path, key: CacheKey) -> np.ndarray:
    """The array in ``path``; raises :class:`CorruptEntry` unless it is exactly a uint8 array of ``key.shape``.

    The header is checked before any data is read, so an object (pickle) dtype or a huge claimed shape is refused
    without loading anything; ``FileNotFoundError`` passes through (another process evicted the entry).
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > key.nbytes + _MAX_HEADER:
            raise CorruptEntry(f"{size} bytes, more than a {key.shape} uint8 array needs")
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise CorruptEntry(f".npy format version {version} not written by this cache")
        except (ValueError, EOFError) as exc:
            raise CorruptEntry(f"not a .npy file ({exc})") from exc
        if dtype != np.uint8 or tuple(shape) != key.shape or fortran:
            raise CorruptEntry(
                f"holds {dtype} {tuple(shape)}{' (Fortran order)' if fortran else ''}, expected uint8 {key.shape}"
            )
        if size != fh.tell() + key.nbytes:
            raise CorruptEntry(f"{size - fh.tell()} bytes of pixels, expected {key.nbytes} (truncated?)")
        fh.seek(0)
        try:
            array = np.load(fh, allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise CorruptEntry(str(exc)) from exc
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape != key.shape:
        raise CorruptEntry(f"loaded as {type(array).__name__}, expected a uint8 {key.shape} array")
    return array


def _check_loaded(array: Any, key: CacheKey) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape != key.shape:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"the loader returned {got}; the cache key expects a uint8 array of shape {key.shape}")
    return np.array(array, copy=True) if array.base is not None or not array.flags.c_contiguous else array


class ImageCache:
    """Decoded images by :class:`CacheKey`: LRU in memory (``max_bytes_memory``), LRU on disk under ``root``
    (``max_bytes_disk``); a limit of 0, or ``root=None``, turns that tier off. Thread safe.

    Arrays handed out are read-only (they are shared between callers); copy one before changing it in place.
    Recency on disk is the file's mtime: set when written, refreshed on every disk hit. Memory hits do not touch
    the disk, but every entry used in a run was written or read (so touched) once in that run, so eviction is
    least recently used to within one run. The disk total is counted at open, kept as a running estimate, and
    recounted from a listing only when the estimate passes the limit (eviction then goes down to 90% of it).
    """

    def __init__(self, root: Path | None, max_bytes_memory: int, max_bytes_disk: int):
        if max_bytes_memory < 0 or max_bytes_disk < 0:
            raise ValueError("cache limits must be >= 0 (0 turns a tier off)")
        self.root = Path(root) if root is not None and max_bytes_disk > 0 else None
        self.max_bytes_memory = int(max_bytes_memory)
        self.max_bytes_disk = int(max_bytes_disk) if self.root is not None else 0
        self._init_state()
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                self._disk_bytes = self._scan()[1]
            except OSError as exc:
                log.warning("image cache: disk tier off, cannot use %s (%s)", self.root, exc)
                self.root, self.max_bytes_disk = None, 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageCache:
        """The cache the settings' ``cache`` block describes (its disk tier under ``STEELQC_HOME`` by default)."""
        block = settings.cache
        return cls(block.root(settings.home), block.max_bytes_memory, block.max_bytes_disk)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_bytes = 0
        self._disk_bytes = 0
        self._inflight: dict[str, Future[np.ndarray]] = {}
        self._stats = dict.fromkeys(
            ("hits_memory", "hits_disk", "misses", "evictions_memory", "evictions_disk", "disk_writes",
             "disk_write_errors", "corrupt_entries", "bytes_loaded", "bytes_written"),
            0,
        )  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (e.g. into a DataLoader worker) as its settings only: a fresh, empty memory tier, zero stats."""
        with self._lock:
            disk_bytes = self._disk_bytes
        return {
            "root": self.root,
            "max_bytes_memory": self.max_bytes_memory,
            "max_bytes_disk": self.max_bytes_disk,
            "disk_bytes": disk_bytes,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root = state["root"]
        self.max_bytes_memory, self.max_bytes_disk = state["max_bytes_memory"], state["max_bytes_disk"]
        self._init_state()
        self._disk_bytes = state["disk_bytes"]

    # ------------------------------------------------------------------------------------------------ lookup

    def get_or_load(self, key: CacheKey, loader: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached image of ``key``, else ``loader()`` (checked against the key's shape, then cached).

        Concurrent calls for the same key decode it once; the others wait for that result (or its exception).
        """
        digest = key.digest()
        with self._lock:
            hit = self._memory.get(digest)
            if hit is not None:
                self._memory.move_to_end(digest)
                self._stats["hits_memory"] += 1
                return hit
            future = self._inflight.get(digest)
            owner = future is None
            if owner:
                future = self._inflight[digest] = Future()
        assert future is not None
        if not owner:
            return future.result()
        try:
            array = self._load(key, digest, loader)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(array)
            return array
        finally:
            with self._lock:
                self._inflight.pop(digest, None)

    def _load(self, key: CacheKey, digest: str, loader: Callable[[], np.ndarray]) -> np.ndarray:
        array = self._disk_get(key, digest)
        if array is None:
            with self._lock:
                self._stats["misses"] += 1
            array = _check_loaded(loader(), key)
            array.flags.writeable = False
            with self._lock:
                self._stats["bytes_loaded"] += array.nbytes
            self._disk_put(digest, array)
        else:
            array.flags.writeable = False
        self._memory_put(digest, array)
        return array

    # ------------------------------------------------------------------------------------------------ memory

    def _memory_put(self, digest: str, array: np.ndarray) -> None:
        if array.nbytes > self.max_bytes_memory:
            return
        with self._lock:
            if digest in self._memory:
                return
            self._memory[digest] = array
            self._memory_bytes += array.nbytes
            while self._memory_bytes > self.max_bytes_memory:
                _, old = self._memory.popitem(last=False)
                self._memory_bytes -= old.nbytes
                self._stats["evictions_memory"] += 1

    # ------------------------------------------------------------------------------------------------ disk

    def path_for(self, key: CacheKey) -> Path | None:
        """Where ``key``'s disk entry lives (None without a disk tier)."""
        return self._path(key.digest()) if self.root is not None else None

    def _path(self, digest: str) -> Path:
        assert self.root is not None
        return self.root / digest[:2] / f"{digest}{ENTRY_SUFFIX}"

    def _disk_get(self, key: CacheKey, digest: str) -> np.ndarray | None:
        if self.root is None:
            return None
        path = self._path(digest)
        try:
            array = _read_entry(path, key)
        except FileNotFoundError:
            return None
        except (CorruptEntry, OSError) as exc:
            log.warning("image cache: %s is unreadable (%s); decoding the image again and replacing it", path, exc)
            with self._lock:
                self._stats["corrupt_entries"] += 1
            self._unlink(path)
            return None
        with contextlib.suppress(OSError):  # evicted by another process meanwhile: the array is still good
            os.utime(path)  # recency for the disk LRU
        with self._lock:
            self._stats["hits_disk"] += 1
        return array

    def _disk_put(self, digest: str, array: np.ndarray) -> None:
        if self.root is None or array.nbytes > self.max_bytes_disk:
            return
        path = self._path(digest)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)

        try:
            atomic_write(path, write)
            size = path.stat().st_size
        except OSError as exc:
            log.warning("image cache: cannot write %s (%s); the image stays uncached on disk", path, exc)
            with self._lock:
                self._stats["disk_write_errors"] += 1
            return
        with self._lock:
            self._stats["disk_writes"] += 1
            self._stats["bytes_written"] += size
            self._disk_bytes += size
            over = self._disk_bytes > self.max_bytes_disk
        if over:
            self._evict_disk()

    def _scan(self) -> tuple[list[tuple[float, int, Path]], int]:
        """Every entry as (mtime, size, path) and their total bytes; removes stale temporary files."""
        assert self.root is not None
        entries: list[tuple[float, int, Path]] = []
        now = time.time()
        try:
            shards = [d for d in os.scandir(self.root) if len(d.name) == 2 and d.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return [], 0
        for shard in shards:
            try:
                files = list(os.scandir(shard.path))
            except FileNotFoundError:
                continue
            for item in files:
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # evicted by another process between listing and stat
                if item.name.endswith(ENTRY_SUFFIX):
                    entries.append((st.st_mtime, st.st_size, Path(item.path)))
                elif item.name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_S:
                    self._unlink(Path(item.path))
        return entries, sum(size for _, size, _ in entries)

    def _evict_disk(self) -> None:
        """List the folder and remove least recently used entries until at most 90% of ``max_bytes_disk``."""
        if not self._evict_lock.acquire(blocking=False):
            return  # another thread is evicting already
        try:
            entries, total = self._scan()
            entries.sort(key=lambda entry: entry[0])
            target = int(self.max_bytes_disk * EVICT_TO)
            evicted = 0
            for _, size, path in entries:
                if total <= target:
                    break
                self._unlink(path)
                total -= size
                evicted += 1
            with self._lock:
                self._disk_bytes = total
                self._stats["evictions_disk"] += evicted
            if evicted:
                log.debug("image cache: evicted %d entries from %s, %d bytes left", evicted, self.root, total)
        finally:
            self._evict_lock.release()

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("image cache: cannot remove %s (%s)", path, exc)

    # ------------------------------------------------------------------------------------------------ stats

    def stats(self) -> dict[str, int]:
        """Counters since this instance was made: hits (memory, disk), misses, evictions, bytes.

        ``bytes_memory``/``entries_memory`` are what the memory tier holds now; ``bytes_disk`` is the running
        estimate of the disk folder's total (exact after each listing).
        """
        with self._lock:
            return {
                **self._stats,
                "entries_memory": len(self._memory),
                "bytes_memory": self._memory_bytes,
                "bytes_disk": self._disk_bytes,
            }

    def clear_memory(self) -> None:
        """Drop the memory tier (the disk tier stays)."""
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
