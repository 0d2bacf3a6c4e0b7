"""Streaming batch inference: images in, one decision record per image out, memory bounded whatever the count.

``predict_stream(items, scorer, load)`` pulls items from any iterable lazily (:func:`walk_images` walks a folder
lazily; an S3 listing fetches one object at a time through its ``load``), reads, hashes, decodes and preprocesses
them on a thread pool while the model scores the previous batch, and yields one record per image in input order.
At most ``max_in_flight`` images are held at any time (submitted to the pool, waiting in the batch or being
scored), so a folder of a million images costs what a few batches cost.

A :class:`Scorer` is what the stream needs of a model: a callable ``batch -> probabilities`` (N x C x H x W
float32 in, N x C softmax out, optionally novelty scores), plus the metadata every record and the decision log
carry (model URI, version, format, calibrated threshold, label space, input spec). :func:`torch_scorer` builds one
for a torch model; an exported model (ONNX, OpenVINO) plugs in by building a :class:`Scorer` around its runtime.

The decision is :func:`~steelqc.tasks.evaluation.metrics.decide` under the scorer's calibrated threshold, the same
rule ``steelqc evaluate`` applies. A file that cannot be read or decoded gets a record with ``error`` (null label
and probabilities); the others go on.

The decision log (:class:`DecisionLog`) appends one JSON line per record to ``<folder>/YYYY-MM-DD.jsonl`` (UTC
day): time, image, content hash, model, version, format, threshold, probabilities, decision, error.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from steelqc.tasks.config import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from steelqc.tasks.data.datasets import InputSpec, build_transforms
from steelqc.tasks.data.imageio import decode_image, read_regular_file
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.metrics import decide
from steelqc.tasks.features import Novelty, _pool
from steelqc.tasks.model.inference import autocast_context, to_device
from steelqc.tasks.model.models import novelty_layers

DECISION_LOG_FIELDS = (
    "time", "image", "sha256", "model", "model_version", "format", "threshold", "critical_class",
    "probabilities", "decision", "critical", "critical_probability", "novelty", "novel", "error",
)  # fmt: skip
"""Keys of every decision-log line, in this order."""


@dataclass(frozen=True)
class Scored:
    """What a scorer returns for a batch: N x C probabilities and, when the model has a novelty reference, N
    novelty scores and flags."""

    proba: np.ndarray
    novelty: np.ndarray | None = None
    novel: np.ndarray | None = None


@dataclass
class Scorer:
    """A model as the stream sees it: ``score(batch)`` (N x C x H x W float32 numpy) -> :class:`Scored`, and the
    metadata of its decisions. ``format``: ``"torch"``, ``"onnx"``, ``"openvino"``...; ``model_version`` the
    registry version (None for a run URI or folder)."""

    score: Callable[[np.ndarray], Scored]
    label_space: LabelSpace
    spec: InputSpec
    threshold: float | None
    model_uri: str
    model_version: str | None = None
    format: str = "torch"
    novelty_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        return {
            "model": self.model_uri,
            "model_version": self.model_version,
            "format": self.format,
            "threshold": self.threshold,
            "critical_class": self.label_space.critical_class,
        }


def torch_scorer(
    model: nn.Module,
    architecture: str,
    label_space: LabelSpace,
    spec: InputSpec,
    threshold: float | None,
    model_uri: str,
    *,
    model_version: str | None = None,
    device: str = "cpu",
    novelty: Novelty | None = None,
) -> Scorer:
    """A :class:`Scorer` for a torch model (channels-last; fp16 autocast on CUDA, as evaluation runs it). With a
    ``novelty`` reference the same forward pass captures the novelty layers' texture statistics."""
    cuda = str(device).startswith("cuda")
    model.to(device, memory_format=torch.channels_last).eval()
    blocks = novelty_layers(model, architecture) if novelty is not None else []

    @torch.inference_mode()
    def score(batch: np.ndarray) -> Scored:
        pooled: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda _m, _a, out: pooled.append(_pool(out))) for b in blocks]
        try:
            with autocast_context(device, cuda):
                logits = model(to_device(torch.from_numpy(batch), device, channels_last=True))
        finally:
            for hook in hooks:
                hook.remove()
        proba = torch.softmax(logits.float(), dim=1).cpu().numpy()
        if novelty is None:
            return Scored(proba)
        scores = novelty.score([p.numpy() for p in pooled])
        return Scored(proba, scores, novelty.is_novel(scores))

    return Scorer(
        score, label_space, spec, threshold, model_uri, model_version, "torch",
        novelty.threshold if novelty is not None else None,
    )  # fmt: skip


def exported_scorer(root: Path | str, fmt: str | None = None, threads: int = 2) -> Scorer:
    """A :class:`Scorer` for an export directory (``steelqc export``: ONNX or OpenVINO, bundle.json), loaded by
    :func:`~steelqc.tasks.model.export.load_export` (checked, runs no code) in ``fmt`` (default: the bundle's
    recommended format). Its model and version are the source the bundle records."""
    from steelqc.tasks.model.export import load_export  # noqa: PLC0415  (ONNX Runtime / OpenVINO: slow)

    exported = load_export(root, fmt, threads)
    source = exported.bundle.get("source") or {}

    def score(batch: np.ndarray) -> Scored:
        return Scored(np.asarray(exported.run(batch), dtype=np.float32))

    return Scorer(
        score, exported.label_space, exported.spec, exported.threshold, str(root),
        source.get("version"), exported.fmt, extra={"source": source},
    )  # fmt: skip


def is_export_dir(path: Path | str) -> bool:
    """Whether ``path`` is an export directory (a bundle.json of the export format at its top)."""
    bundle = Path(path) / "bundle.json"
    try:
        return bundle.is_file() and json.loads(bundle.read_text()).get("format", "").startswith("steelqc-export/")
    except (OSError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Loaded:
    """One image read: its name for the record and its bytes (or why it could not be read)."""

    image: str
    data: bytes | None = None
    error: str | None = None


Loader = Callable[[Any], Loaded]


def file_loader(max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Loader:
    """Read a local path (regular files only, never a FIFO or device; at most ``max_bytes``)."""

    def load(item: Any) -> Loaded:
        path = Path(item)
        if not path.exists() and not path.is_symlink():
            return Loaded(str(item), error="no such file")
        try:
            data = read_regular_file(path, max_bytes)
        except Exception as exc:  # not a regular file, permission...
            return Loaded(str(item), error=f"not a regular file or unreadable ({exc})")
        if len(data) > max_bytes:
            return Loaded(str(item), error=f"more than max_image_bytes ({max_bytes}) bytes: refused")
        return Loaded(str(item), data)

    return load


def walk_images(root: Path, accept: Callable[[str], bool]) -> Iterator[Path]:
    """Files under ``root`` whose names ``accept`` takes, in sorted order, found lazily (one folder listed at a
    time); hidden folders and symlinked folders are not entered."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if accept(name):
                yield Path(folder) / name


# ------------------------------------------------------------------------------------------------ the stream


@dataclass
class _Prepared:
    image: str
    sha256: str | None
    tensor: np.ndarray | None
    error: str | None


class _Preprocess:
    """Decode with the one decoder and preprocess as evaluation does (resize, normalise); one transform per thread."""

    def __init__(self, spec: InputSpec, load: Loader, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.spec, self.load, self.local, self.max_pixels = spec, load, threading.local(), max_pixels

    def __call__(self, item: Any) -> _Prepared:
        try:
            loaded = self.load(item)
        except Exception as exc:  # a loader that raises (an S3 download that failed...)
            return _Prepared(str(item), None, None, f"unreadable image: {type(exc).__name__}: {exc}")
        if loaded.data is None:
            return _Prepared(loaded.image, None, None, loaded.error or "unreadable image")
        sha = hashlib.sha256(loaded.data).hexdigest()
        try:
            if not hasattr(self.local, "transform"):
                self.local.transform = build_transforms(self.spec, train=False)
            img = decode_image(io.BytesIO(loaded.data), self.spec.image_channels, self.max_pixels)
            tensor = self.local.transform(image=img)["image"].numpy()
        except Exception as exc:  # truncated, not an image, unsupported mode, decompression bomb...
            return _Prepared(loaded.image, sha, None, f"unreadable image: {type(exc).__name__}: {exc}")
        return _Prepared(loaded.image, sha, np.ascontiguousarray(tensor, dtype=np.float32), None)


def predict_stream(
    items: Iterable[Any],
    scorer: Scorer,
    load: Loader | None = None,
    *,
    batch_size: int = 16,
    workers: int = 2,
    max_in_flight: int | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[dict[str, Any]]:
    """One record per item, in input order (see the module docstring). ``max_in_flight`` (default twice the
    batch, at least the batch): the most images read but not yet yielded as records. An image of more than
    ``max_pixels`` pixels is refused unread (its record says why)."""
    load = load or file_loader()
    batch_size = max(1, int(batch_size))
    window = max(batch_size, int(max_in_flight or 2 * batch_size))
    prepare = _Preprocess(scorer.spec, load, max_pixels)
    source = iter(items)
    pending: deque[Future[_Prepared]] = deque()
    batch: list[_Prepared] = []
    exhausted = False
    with ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="steelqc-decode") as pool:
        try:
            while True:
                while not exhausted and len(pending) + len(batch) < window:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(pool.submit(prepare, item))
                if not pending:
                    break
                batch.append(pending.popleft().result())
                if len(batch) >= batch_size or (exhausted and not pending):
                    yield from _score(batch, scorer)
                    batch = []
            if batch:
                yield from _score(batch, scorer)
        finally:
            for future in pending:
                future.cancel()


def _score(batch: list[_Prepared], scorer: Scorer) -> Iterator[dict[str, Any]]:
    good = [p for p in batch if p.error is None]
    scored = scorer.score(np.stack([p.tensor for p in good])) if good else None
    space, names = scorer.label_space, scorer.label_space.names
    chosen = decide(scored.proba, space.critical_index, scorer.threshold) if scored is not None else []
    row = 0
    for prepared in batch:
        if prepared.error is not None:
            yield error_record(prepared.image, prepared.error, prepared.sha256)
            continue
        assert scored is not None
        proba, index = scored.proba[row], int(chosen[row])
        novelty = None if scored.novelty is None else round(float(scored.novelty[row]), 4)
        novel = None if scored.novel is None else bool(scored.novel[row])
        row += 1
        yield {
            "image": prepared.image,
            "sha256": prepared.sha256,
            "label": names[index],
            "label_id": space.id_of(index),
            "probabilities": dict(zip(names, map(float, proba), strict=True)),
            "critical": bool(index == space.critical_index),
            "critical_probability": float(proba[space.critical_index]),
            "novelty": novelty,
            "novel": novel,
        }
    for prepared in batch:
        prepared.tensor = None


def error_record(image: str, error: str, sha256: str | None = None) -> dict[str, Any]:
    """The record of an image that could not be predicted."""
    return {
        "image": image, "sha256": sha256, "label": None, "probabilities": None, "critical": None,
        "critical_probability": None, "error": error,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ decision log


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DecisionLog:
    """Append-only JSON lines, one per decision, in ``folder/YYYY-MM-DD.jsonl`` (the UTC day of the decision).

    Each line is written with one ``write`` on a file opened ``O_APPEND`` (so lines of concurrent writers never
    interleave) and reaches the OS at once; :meth:`close` fsyncs. The folder is created when missing.
    """

    def __init__(self, folder: Path, meta: dict[str, Any], clock: Callable[[], str] = utc_now):
        self.folder, self.meta, self.clock = Path(folder), dict(meta), clock
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._day: str | None = None
        self.paths: list[Path] = []
        self.written = 0

    def _file_for(self, day: str) -> int:
        if day != self._day or self._fd is None:
            self._close_fd()
            path = self.folder / f"{day}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
            self._day = day
            if path not in self.paths:
                self.paths.append(path)
        return self._fd

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write the log line of ``record`` (a :func:`predict_stream` record); returns the line as a dict."""
        now = self.clock()
        line = {
            "time": now,
            "image": record.get("image"),
            "sha256": record.get("sha256"),
            **self.meta,
            "probabilities": record.get("probabilities"),
            "decision": record.get("label"),
            "critical": record.get("critical"),
            "critical_probability": record.get("critical_probability"),
            "novelty": record.get("novelty"),
            "novel": record.get("novel"),
            "error": record.get("error"),
        }
        line = {key: line.get(key) for key in DECISION_LOG_FIELDS}
        data = (json.dumps(line, default=str, ensure_ascii=False) + "\n").encode()
        fd = self._file_for(now[:10])
        written = os.write(fd, data)
        while written < len(data):  # a short write (full disk, signal): finish the line
            written += os.write(fd, data[written:])
        self.written += 1
        return line

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def close(self) -> None:
        self._close_fd()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ sinks


class CsvRecords:
    """Records as CSV rows, written as they come: one ``p_<class>`` column a class."""

    def __init__(self, path: Path, names: list[str]):
        self.path, self.names = Path(path), list(names)
        self.columns = ["image", "sha256", "label", "critical", "critical_probability"]
        self.columns += [f"p_{n}" for n in self.names] + ["novelty", "novel", "error"]

    def __enter__(self) -> CsvRecords:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.path.open("w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, self.columns, extrasaction="ignore")
        self.writer.writeheader()
        return self

    def write(self, record: dict) -> None:
        probabilities = record.get("probabilities") or {}
        self.writer.writerow({**record, **{f"p_{n}": probabilities.get(n) for n in self.names}})

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def collect(
    stream: Iterable[dict[str, Any]],
    decisions: DecisionLog | None = None,
    csv_path: Path | None = None,
    names: list[str] | tuple[str, ...] = (),
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The records of ``stream`` as a list (small: no pixels), each appended to the decision log and the CSV as it
    comes, with a progress bar on stderr when ``progress``."""
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(CsvRecords(csv_path, list(names))) if csv_path is not None else None
        bar = stack.enter_context(tqdm(desc="predict", unit="img", file=sys.stderr, disable=not progress))
        for record in stream:
            if decisions is not None:
                decisions.append(record)
            if writer is not None:
                writer.write(record)
            records.append(record)
            bar.update(1)
    return records
