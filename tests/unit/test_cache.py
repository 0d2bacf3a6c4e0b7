"""The decoded-image cache: memory and disk LRU by bytes, keys, persistence across runs, corrupt entries, threads."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from steelqc.tasks.config import Settings
from steelqc.tasks.data.cache import DECODER_VERSION, CacheKey, ImageCache

H, W = 10, 100
ENTRY_BYTES = 128 + H * W  # .npy header + pixels of one grey entry


def sha(n: int) -> str:
    return hashlib.sha256(f"image-{n}".encode()).hexdigest()


def key(n: int, **changes: object) -> CacheKey:
    return replace(CacheKey(sha(n), H, W, 1, decoder_version="test-1"), **changes)


def image(value: int, k: CacheKey | None = None) -> np.ndarray:
    shape = k.shape if k is not None else (H, W)
    return np.full(shape, value, dtype=np.uint8)


class Loader:
    """Counts calls per key; returns the image ``value`` for that key."""

    def __init__(self) -> None:
        self.calls: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, n: int, k: CacheKey | None = None, delay: float = 0.0) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            with self._lock:
                self.calls[n] += 1
            if delay:
                time.sleep(delay)
            return image(n, k)

        return load


def fail() -> np.ndarray:
    raise AssertionError("the loader should not be called: the image is cached")


def entries(root: Path) -> set[Path]:
    return set(root.glob("*/*.npy"))


# ------------------------------------------------------------------------------------------------ keys


def test_key_digest_is_stable_and_depends_on_every_field() -> None:
    k = CacheKey(sha(0), 128, 800, 1, decoder_version="imageio-1", preprocessing=("resize:area",))
    # A fixed value: a change of the hashing would silently orphan every cache on disk.
    assert k.digest() == "fecf8cf92d3df4764ee361f876d2647d3e359341e60c786601bd286135995a17"
    assert CacheKey(sha(0), 128, 800, 1, "imageio-1", ("resize:area",)).digest() == k.digest()
    variants = [
        replace(k, content_sha256=sha(1)),
        replace(k, height=129),
        replace(k, width=801),
        replace(k, channels=3),
        replace(k, decoder_version="imageio-2"),
        replace(k, preprocessing=()),
        replace(k, preprocessing=("resize:area", "corruption:glare-v1")),
        replace(k, preprocessing=("corruption:glare-v1", "resize:area")),
    ]
    assert len({v.digest() for v in [k, *variants]}) == len(variants) + 1
    assert DECODER_VERSION.startswith("imageio-") and CacheKey(sha(0), 1, 1).decoder_version == DECODER_VERSION


@pytest.mark.parametrize(
    "fields",
    [
        {"content_sha256": "abc"},
        {"content_sha256": sha(0).upper()},
        {"height": 0},
        {"width": -1},
        {"channels": 2},
        {"decoder_version": ""},
        {"preprocessing": ("",)},
    ],
)
def test_invalid_keys_are_refused(fields: dict) -> None:
    with pytest.raises(ValueError):
        key(0, **fields)


def test_key_for_file_hashes_the_content_not_the_path(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.jpg"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    c.write_bytes(b"other bytes")
    ka, kb, kc = (CacheKey.for_file(p, H, W) for p in (a, b, c))
    assert ka.content_sha256 == hashlib.sha256(b"same bytes").hexdigest()
    assert ka.digest() == kb.digest() != kc.digest()


# ------------------------------------------------------------------------------------------------ memory tier


def test_memory_tier_evicts_the_least_recently_used_by_bytes() -> None:
    cache = ImageCache(None, max_bytes_memory=int(2.5 * H * W), max_bytes_disk=0)
    load = Loader()
    cache.get_or_load(key(1), load(1))
    cache.get_or_load(key(2), load(2))
    assert cache.get_or_load(key(1), fail)[0, 0] == 1  # 1 is now the most recent
    cache.get_or_load(key(3), load(3))  # over 2.5 images: 2, the least recently used, goes
    assert cache.stats()["bytes_memory"] == 2 * H * W and cache.stats()["evictions_memory"] == 1
    assert cache.get_or_load(key(1), fail)[0, 0] == 1
    assert cache.get_or_load(key(3), fail)[0, 0] == 3
    assert cache.get_or_load(key(2), load(2))[0, 0] == 2
    assert load.calls == {1: 1, 2: 2, 3: 1}
    stats = cache.stats()
    assert (stats["hits_memory"], stats["misses"], stats["hits_disk"]) == (3, 4, 0)


def test_arrays_handed_out_are_read_only_and_checked_against_the_key() -> None:
    cache = ImageCache(None, max_bytes_memory=10**6, max_bytes_disk=0)
    arr = cache.get_or_load(key(1), Loader()(1))
    with pytest.raises(ValueError):
        arr[0, 0] = 9
    with pytest.raises(ValueError, match="expects a uint8 array of shape"):
        cache.get_or_load(key(2), lambda: np.zeros((H, W + 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="expects a uint8 array of shape"):
        cache.get_or_load(key(3), lambda: np.zeros((H, W), dtype=np.float32))
    assert cache.stats()["entries_memory"] == 1


def test_a_failing_loader_caches_nothing_and_raises_again() -> None:
    cache = ImageCache(None, max_bytes_memory=10**6, max_bytes_disk=0)

    def broken() -> np.ndarray:
        raise OSError("truncated JPEG")

    for _ in range(2):
        with pytest.raises(OSError, match="truncated JPEG"):
            cache.get_or_load(key(1), broken)
    assert cache.get_or_load(key(1), Loader()(1))[0, 0] == 1


# ------------------------------------------------------------------------------------------------ disk tier


def test_disk_entries_survive_a_new_cache_and_the_loader_is_not_called(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    load = Loader()
    first = ImageCache(root, max_bytes_memory=10**6, max_bytes_disk=10**6)
    for n in range(5):
        first.get_or_load(key(n), load(n))
    assert len(entries(root)) == 5 and first.stats()["disk_writes"] == 5
    assert first.path_for(key(0)) in entries(root)

    second = ImageCache(root, max_bytes_memory=10**6, max_bytes_disk=10**6)  # the next night's run
    assert second.stats()["bytes_disk"] == 5 * ENTRY_BYTES  # counted at open
    for n in range(5):
        arr = second.get_or_load(key(n), fail)
        assert arr.shape == (H, W) and arr.dtype == np.uint8 and (arr == n).all()
    assert second.get_or_load(key(0), fail)[0, 0] == 0  # now from memory
    stats = second.stats()
    assert (stats["hits_disk"], stats["hits_memory"], stats["misses"]) == (5, 1, 0)
    assert load.calls == dict.fromkeys(range(5), 1)


@pytest.mark.parametrize(
    "changes",
    [
        {"height": H + 1},
        {"width": W // 2},
        {"channels": 3},
        {"decoder_version": "test-2"},
        {"content_sha256": sha(99)},
        {"preprocessing": ("corruption:glare-v1",)},
    ],
)
def test_a_changed_key_misses_on_disk(tmp_path: Path, changes: dict) -> None:
    root = tmp_path / "cache"
    ImageCache(root, 0, 10**6).get_or_load(key(1), Loader()(1))
    changed = key(1, **changes)
    load = Loader()
    cache = ImageCache(root, 0, 10**6)
    arr = cache.get_or_load(changed, load(7, changed))
    assert arr.shape == changed.shape and (arr == 7).all() and load.calls[7] == 1
    assert cache.get_or_load(key(1), fail)[0, 0] == 1  # the original entry is still there
    assert len(entries(root)) == 2


def test_disk_tier_stays_under_its_limit_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    limit = int(3.5 * ENTRY_BYTES)
    writer = ImageCache(root, 0, limit)
    for n in (1, 2, 3):
        writer.get_or_load(key(n), Loader()(n))
    past = time.time() - 1000
    for i, n in enumerate((1, 2, 3)):  # written in order 1, 2, 3 (explicit times: no mtime granularity issue)
        os.utime(writer.path_for(key(n)), (past + i, past + i))

    reader = ImageCache(root, 0, limit)  # a later run reads 1: now 2 is the least recently used
    assert reader.get_or_load(key(1), fail)[0, 0] == 1
    reader.get_or_load(key(4), Loader()(4))  # 4 entries > 3.5: evict down to 90%
    assert {p.stem for p in entries(root)} == {key(n).digest() for n in (1, 3, 4)}
    assert sum(p.stat().st_size for p in entries(root)) <= limit
    assert reader.stats()["evictions_disk"] == 1 and reader.stats()["bytes_disk"] == 3 * ENTRY_BYTES

    load = Loader()
    assert ImageCache(root, 0, limit).get_or_load(key(2), load(2))[0, 0] == 2 and load.calls[2] == 1


def test_disk_eviction_does_not_list_the_folder_on_every_write(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "cache"
    cache = ImageCache(root, 0, int(10.5 * ENTRY_BYTES))
    scans = Counter()
    original = ImageCache._scan

    def counting_scan(self: ImageCache):
        scans["n"] += 1
        return original(self)

    monkeypatch.setattr(ImageCache, "_scan", counting_scan)
    for n in range(10):
        cache.get_or_load(key(n), Loader()(n))
    assert scans["n"] == 0  # under the limit: the running estimate suffices
    for n in range(10, 14):
        cache.get_or_load(key(n), Loader()(n))
    assert scans["n"] <= 2  # the listing happens once per 10% of the limit written, not per write
    assert sum(p.stat().st_size for p in entries(root)) <= 10.5 * ENTRY_BYTES


def test_an_entry_deleted_by_another_process_is_a_plain_miss(tmp_path: Path, caplog) -> None:
    root = tmp_path / "cache"
    cache = ImageCache(root, 0, 10**6)
    cache.get_or_load(key(1), Loader()(1))
    cache.path_for(key(1)).unlink()
    load = Loader()
    with caplog.at_level(logging.WARNING, logger="steelqc.tasks.data.cache"):
        assert cache.get_or_load(key(1), load(1))[0, 0] == 1
    assert load.calls[1] == 1 and not caplog.records
    assert cache.path_for(key(1)).exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: ENTRY_BYTES // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff not an npy file at all" * 10)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _wrong_shape(path: Path) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((W, H), dtype=np.uint8))


def _wrong_dtype(path: Path) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((H, W), dtype=np.int16)[:, : W // 2])


def _trailing_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"extra")


@pytest.mark.parametrize("damage", [_truncate, _garbage, _empty, _wrong_shape, _wrong_dtype, _trailing_bytes])
def test_a_corrupt_entry_is_decoded_again_and_replaced_with_a_warning(
    tmp_path: Path, caplog, damage: Callable[[Path], None]
) -> None:
    root = tmp_path / "cache"
    ImageCache(root, 0, 10**6).get_or_load(key(1), Loader()(1))
    path = ImageCache(root, 0, 10**6).path_for(key(1))
    damage(path)
    load = Loader()
    cache = ImageCache(root, 0, 10**6)
    with caplog.at_level(logging.WARNING, logger="steelqc.tasks.data.cache"):
        arr = cache.get_or_load(key(1), load(1))
    assert (arr == 1).all() and load.calls[1] == 1
    assert [r for r in caplog.records if str(path) in r.getMessage()], "the warning names the file"
    assert cache.stats()["corrupt_entries"] == 1
    replaced = np.load(path, allow_pickle=False)
    assert replaced.dtype == np.uint8 and replaced.shape == (H, W) and (replaced == 1).all()
    assert ImageCache(root, 0, 10**6).get_or_load(key(1), fail)[0, 0] == 1


class _Evil:
    """Unpickling this creates a marker file: proof that pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_entry_is_refused_never_unpickled(tmp_path: Path, caplog, monkeypatch) -> None:
    root = tmp_path / "cache"
    marker = tmp_path / "unpickled"
    path = ImageCache(root, 0, 10**6).path_for(key(1))
    path.parent.mkdir(parents=True)
    payload = np.empty((H, W), dtype=object)
    payload[...] = 0
    payload[0, 0] = _Evil(marker)
    with open(path, "wb") as fh:
        np.save(fh, payload, allow_pickle=True)
    assert np.load(path, allow_pickle=True) is not None and marker.exists()  # the payload really is live
    marker.unlink()

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle must never be used to read a cache entry")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    load = Loader()
    with caplog.at_level(logging.WARNING, logger="steelqc.tasks.data.cache"):
        arr = ImageCache(root, 0, 10**6).get_or_load(key(1), load(1))
    assert (arr == 1).all() and load.calls[1] == 1 and not marker.exists()
    assert any(str(path) in r.getMessage() for r in caplog.records)
    assert np.load(path, allow_pickle=False).dtype == np.uint8  # replaced by a plain array


def test_stale_temporary_files_are_removed_when_the_folder_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "ab").mkdir(parents=True)
    stale, fresh = root / "ab" / ".x.npy.1.tmp", root / "ab" / ".y.npy.2.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    ImageCache(root, 0, 10**6)
    assert not stale.exists() and fresh.exists()


# ------------------------------------------------------------------------------------------------ tiers off


def test_zero_limits_turn_the_tiers_off(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    load = Loader()
    nothing = ImageCache(root, max_bytes_memory=0, max_bytes_disk=0)
    for _ in range(2):
        nothing.get_or_load(key(1), load(1))
    assert load.calls[1] == 2 and not root.exists()  # the disk tier off creates nothing
    assert nothing.path_for(key(1)) is None

    disk_only = ImageCache(root, max_bytes_memory=0, max_bytes_disk=10**6)
    for _ in range(3):
        disk_only.get_or_load(key(2), load(2))
    stats = disk_only.stats()
    assert load.calls[2] == 1 and (stats["hits_disk"], stats["hits_memory"], stats["entries_memory"]) == (2, 0, 0)

    memory_only = ImageCache(None, max_bytes_memory=10**6, max_bytes_disk=10**6)
    for _ in range(3):
        memory_only.get_or_load(key(3), load(3))
    assert load.calls[3] == 1 and memory_only.stats()["hits_memory"] == 2
    assert {p.stem for p in entries(root)} == {key(2).digest()}  # nothing of 1 or 3 on disk


def test_an_image_larger_than_a_tier_is_not_kept_in_it(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", max_bytes_memory=H * W - 1, max_bytes_disk=ENTRY_BYTES - 1)
    load = Loader()
    cache.get_or_load(key(1), load(1))
    cache.get_or_load(key(1), load(1))
    assert load.calls[1] == 2 and cache.stats()["entries_memory"] == 0 and not entries(tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ threads


@pytest.mark.parametrize(("memory", "disk"), [(10**7, 0), (3 * H * W, 10**7)], ids=["memory-only", "small-memory+disk"])
def test_concurrent_get_or_load_returns_the_right_arrays_and_loads_each_once(
    tmp_path: Path, memory: int, disk: int
) -> None:
    cache = ImageCache(tmp_path / "cache", max_bytes_memory=memory, max_bytes_disk=disk)
    load = Loader()
    requests = [n // 10 for n in range(400)]  # each key asked for 10 times in a row: concurrent misses

    def get(n: int) -> tuple[int, np.ndarray]:
        return n, cache.get_or_load(key(n), load(n, delay=0.002))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(get, requests))
    assert all(arr.shape == (H, W) and (arr == n).all() for n, arr in results)
    assert load.calls == dict.fromkeys(range(40), 1)  # concurrent misses of one key decode it once
    stats = cache.stats()
    assert stats["misses"] == 40 and stats["hits_memory"] + stats["hits_disk"] + stats["misses"] <= 400


def test_a_pickled_cache_starts_with_an_empty_memory_tier_and_the_same_disk(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", 10**6, 10**6)
    cache.get_or_load(key(1), Loader()(1))
    copy = pickle.loads(pickle.dumps(cache))  # what a DataLoader worker gets
    assert copy.stats()["entries_memory"] == 0 and copy.stats()["bytes_disk"] == ENTRY_BYTES
    assert copy.get_or_load(key(1), fail)[0, 0] == 1 and copy.stats()["hits_disk"] == 1


# ------------------------------------------------------------------------------------------------ settings


def test_cache_settings_defaults_and_environment(steelqc_home: Path, monkeypatch, tmp_path: Path) -> None:
    s = Settings()
    assert (s.cache.max_bytes_memory, s.cache.max_bytes_disk) == (2 * 1024**3, 20 * 1024**3)
    assert s.cache.root(s.home) == steelqc_home / "cache" / "images"
    monkeypatch.setenv("STEELQC_CACHE__MAX_BYTES_MEMORY", "0")
    monkeypatch.setenv("STEELQC_CACHE__MAX_BYTES_DISK", "1000")
    monkeypatch.setenv("STEELQC_CACHE__DIR", str(tmp_path / "elsewhere"))
    s = Settings()
    assert (s.cache.max_bytes_memory, s.cache.max_bytes_disk) == (0, 1000)
    assert s.cache.root(s.home) == tmp_path / "elsewhere"
    with pytest.raises(ValidationError):
        Settings(cache={"max_bytes_memory": -1})
