"""Giving freed heap memory back to the operating system.

A long pass over many images (the monitor's feature pass, a training run's drift reference) allocates and frees
large per-batch buffers while keeping small per-image results; glibc's allocator then keeps the freed space of its
heaps between the kept blocks, and the process's resident memory grows with the number of images although nothing
is kept (measured: about 130 KB an image at 128x800, MobileNetV2, given back by ``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Return the free memory of the C heap to the operating system (glibc ``malloc_trim(0)``); False where
    unavailable. Cheap enough to call every few batches."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
