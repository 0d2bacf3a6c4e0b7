"""Helpers shared by the test folders: paths, data-set writers, the tiny training task, the CLI runner.

Plain functions and constants only; fixtures live in the conftest.py of the folder that uses them (and in
tests/conftest.py when every folder does). Test modules import from here, never from each other.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STEELQC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped when it is not there (a user's fresh clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present (../shared/data is only on the project machines)")
    return path


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout_s: float, any_answer: bool = False):
    """Wait until ``url`` answers 200 (any HTTP answer with ``any_answer``); fail the test with the end of ``log``
    when ``proc`` exits or ``timeout_s`` passes. Loopback only: no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError:  # an HTTP answer, even an error
            if any_answer:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------ data-set writers

H, W = 256, 1600  # a Severstal image


def write_image(path: Path, shape=(H, W), fmt: str = "JPEG", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 200, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(path, fmt)
    return path


def png_bomb(path: Path, width: int = 60_000, height: int = 60_000) -> Path:
    """A tiny PNG whose header claims a huge image (the header's CRC is recomputed)."""
    write_image(path, (8, 8), "PNG")
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def write_csv(root: Path, text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(text)


def make_messy(root: Path) -> Path:
    """A Severstal data set holding one of each fault next to valid images (7 valid, 14 quarantined; the
    expected reasons are in tests/data/test_ingest.py)."""
    images = root / "train_images"
    for i, name in enumerate(["ok1.jpg", "ok2.jpg", "crack.jpg", "multi.jpg", "dent.jpg", "dup.jpg"]):
        write_image(images / name, seed=i)
    write_image(images / "png_inside.jpg", fmt="PNG", seed=9)  # extension lies; content decides: valid
    for name in ["badrle.jpg", "cls9.jpg", "conflict.jpg", "clsx.jpg"]:
        write_image(images / name, seed=11)
    write_image(images / "small.jpg", shape=(100, 100))
    truncated = write_image(images / "truncated.jpg", seed=3).read_bytes()
    (images / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (images / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    (images / "empty.jpg").write_bytes(b"")
    png_bomb(images / "bomb.jpg")
    write_csv(
        root,
        "ImageId,ClassId,EncodedPixels\n"
        "crack.jpg,1,100 20 400 20\n"
        "multi.jpg,3,5000 50\n"
        "multi.jpg,1,9000 10\n"
        "dent.jpg,3,1 5\n"
        "dup.jpg,3,10 5\n"
        "dup.jpg,3,10 5\n"
        "png_inside.jpg,4,2000 100\n"
        "missing.jpg,3,1 5\n"
        "badrle.jpg,3,1 2 3\n"
        "cls9.jpg,9,1 5\n"
        "clsx.jpg,two,1 5\n"
        "conflict.jpg,2,1 5\n"
        "conflict.jpg,2,10 5\n"
        "../escape.jpg,1,1 5\n"
        "sub/inner.jpg,1,1 5\n"
        "small.jpg,3,1 5\n"
        "short.jpg,3\n",
    )
    return root


def make_folders(root: Path) -> Path:
    """A class-per-folder data set (ok 2, crack 2, rust 1) with a text file, a broken image and a stray file."""
    write_image(root / "ok" / "o1.png", (64, 64), "PNG")
    write_image(root / "ok" / "o2.jpg", (64, 64))
    write_image(root / "rust" / "r1.bmp", (32, 48), "BMP")
    write_image(root / "crack" / "c1.jpeg", (80, 80))
    write_image(root / "crack" / "c2.JPG", (80, 80))
    (root / "crack" / "notes.txt").write_text("not an image")
    (root / "crack" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "readme.md").write_text("top-level file")
    return root


# ------------------------------------------------------------------------ the tiny training task (blobs)

LABELS = LabelSpace({0: "ok", 1: "crack", 2: "scratch"}, "crack")
SHAPE = (32, 64)


def blob_image(label: int, rng: np.random.Generator, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Noisy grey texture; class 1 has a dark blob, class 2 a bright one (learnable, brightness-independent)."""
    h, w = shape
    img = rng.normal(120, 10, shape)
    if label:
        cy, cx = rng.integers(6, h - 6), rng.integers(6, w - 6)
        yy, xx = np.ogrid[:h, :w]
        img += (-80 if label == 1 else 80) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.5**2))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_split(root: Path, n: int, seed: int) -> pd.DataFrame:
    """``n`` blob images (labels 0, 1, 2 in turn) under ``root``, as a split's manifest."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 3
        path = root / f"s{seed}_{i}.png"
        Image.fromarray(blob_image(label, rng)).save(path)
        rows.append({"image_id": path.name, "path": str(path), "label": label, "sha256": f"{seed}:{i}"})
    return pd.DataFrame(rows)


def cfg(**kwargs: object) -> TrainConfig:
    """A training config for the blob task (simple CNN from scratch, small input), with ``kwargs`` over it."""
    base = dict(height=SHAPE[0], width=SHAPE[1], batch_size=12, lr=3e-3, epochs=2, patience=0, cache_images=True)
    base.update(model="simple_cnn", weights="none", weighted_loss=True, num_workers=0)  # not the product defaults
    return TrainConfig(**{**base, **kwargs})


# ----------------------------------------------------------------------------------------------- the CLI

STEELQC = [str(Path(sys.executable).with_name("steelqc"))]

# The tiny profile (simple CNN, 32x192 inputs, one epoch) cannot reach the product's gate thresholds; tests of the
# promotion mechanics relax them through settings (they are settings). Model quality is measured by `make demo`
# and benchmarks/, not by the tests.
RELAXED = {
    "STEELQC_GATES__MACRO_F1_MIN": "0",
    "STEELQC_GATES__CRITICAL_RECALL_MIN": "0",
    "STEELQC_GATES__CRITICAL_PRECISION_MIN": "0",
    "STEELQC_GATES__GLARE_DELTA_F1_MAX": "1",
    "STEELQC_GATES__MIN_TEST_SUPPORT_PER_CLASS": "1",
    "STEELQC_GATES__CHAMPION_MACRO_F1_TOLERANCE": "1",
    "STEELQC_BOOTSTRAP_SAMPLES": "200",
}

# A two-parameter search space: tuning tests run a few one-epoch trials.
TINY_SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "scheduler": {"type": "categorical", "choices": ["none", "cosine"]},
}


@dataclass(frozen=True)
class Champion:
    """A tiny model registered as champion in its own STEELQC_HOME (the integration tests' ``champion`` fixture);
    ``data`` is what it was trained on, ``summary`` the JSON of its `steelqc train`."""

    home: Path
    uri: str
    data: Path
    summary: dict[str, Any]


def run(*args: str, home: Path | None = None) -> tuple[int, dict | None, str]:
    """Run the CLI; returns (exit code, parsed stdout JSON or None, stderr)."""
    env = dict(os.environ)
    if home is not None:
        env["STEELQC_HOME"] = str(home)
    proc = subprocess.run([*STEELQC, *args], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) <= 1, f"stdout must hold one JSON object, got: {proc.stdout!r}"
    return proc.returncode, (json.loads(lines[0]) if lines else None), proc.stderr


class Blocked(Exception):
    """A call blocked (not an OSError, so no ``except OSError`` can turn it into a quarantine reason)."""


@contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when a call in the main thread blocks for longer than ``seconds``."""

    def expired(signum: int, frame: object) -> None:
        raise Blocked(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
