"""The review queue: images picked for people to label, from a monitoring batch or a training run's evaluation.

:func:`select_for_review` picks rows of a monitoring batch (pure, seeded); a training run picks its suspected label
errors and most confident mistakes (:mod:`steelqc.tasks.evaluation.label_issues`). A :class:`ReviewQueue` (a local
folder or an S3 prefix, :func:`open_review_queue`) keeps one JSON entry per image, named by its content hash::

    queue/<sha256>.json   {"image", "source_uri", "sha256", "reasons", "predicted", "confidence",
                           "critical_proba", "novelty" (when known), "queued_at",
                           "monitoring_run" (queued by the drift monitor) or
                           "training_run", "label", "split" (queued by a training run: the class the data gives
                           and the split the image is in), "model_version" (when known)}
    images/<sha256><ext>  a local queue's own copy of the image (the inbox may be emptied later)

``image`` is where a labeller finds the image: the queue's copy in a local queue; the object itself when the
image came from S3 and the queue is in S3; an uploaded copy under ``images/`` when a local image goes to an S3
queue. Adding an image again merges its reasons into the entry (and the data's ``label`` when the entry has none),
never a second entry; the entry keeps the origin and the model's guess of whoever queued it first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from steelqc.monitoring.inbox import IMAGE_EXTENSIONS, InboxError, check_bucket, parse_s3_uri, s3_client
from steelqc.monitoring.ledger import atomic_write_bytes, utc_now
from steelqc.tasks.config import Settings
from steelqc.tasks.data.imageio import read_regular_file
from steelqc.tasks.evaluation.label_issues import CONFIDENT_MISTAKE, SUSPECTED_LABEL_ERROR

log = logging.getLogger(__name__)
NEAR = "near-critical-threshold"

REASONS = (
    "least-confident",
    "near-critical-threshold",
    "novel",
    "drift-sample",
    SUSPECTED_LABEL_ERROR,
    CONFIDENT_MISTAKE,
)
"""Why an image is queued, in the order an entry lists them: the drift monitor's, then a training run's."""
ORIGINS = {"monitoring": "monitoring_run", "training": "training_run"}
"""Who queues an image -> the entry's key that names their run."""
REQUIRED_COLUMNS = ("uri", "sha256", "predicted", "confidence", "critical_proba", "novel")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EPS = 1e-12  # |p - threshold| <= margin must hold at the boundary despite float rounding


class ReviewQueueError(ValueError):
    """A review queue that cannot be opened or written; the message names it."""


# ------------------------------------------------------------------------------------------- selection


def _first(rows: np.ndarray, key: np.ndarray, most: int | None, uris: pd.Series, reason: str) -> list[int]:
    """Of ``rows``, the ``most`` with the smallest ``key`` (NaN last, ties by uri); all when ``most`` is None."""
    if most is None or len(rows) <= most:
        return [int(i) for i in rows]
    log.info("review: %d of %d %s images queued (the cap of one batch)", most, len(rows), reason)
    order = pd.DataFrame({"k": key[rows], "uri": uris.to_numpy()[rows].astype(str), "i": rows})
    return [int(i) for i in order.sort_values(["k", "uri"], kind="stable", na_position="last")["i"][:most]]


def select_for_review(
    records: pd.DataFrame,
    *,
    least_confident: int,
    margin: float,
    threshold: float | None,
    drifted: bool,
    drift_sample: int,
    seed: int,
    near_threshold: int | None = None,
    most_novel: int | None = None,
) -> pd.DataFrame:
    """The rows of ``records`` to queue for labelling, each once, with a ``reasons`` column (list of str).

    Reasons: ``least-confident`` (the ``least_confident`` lowest ``confidence``, ties by uri),
    ``near-critical-threshold`` (``|critical_proba - threshold| <= margin``, the ``near_threshold`` closest; none
    when ``threshold`` is None), ``novel`` (``novel`` true, the ``most_novel`` highest ``novelty``), ``drift-sample``
    (when ``drifted``: ``drift_sample`` rows drawn with ``seed`` from
    the rows no other reason picked). Rows keep the order of ``records``; a repeated ``sha256`` counts once.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"select_for_review: records lack columns {missing}")
    batch = records.drop_duplicates("sha256", keep="first").reset_index(drop=True)
    reasons: list[list[str]] = [[] for _ in range(len(batch))]

    if least_confident > 0 and len(batch):
        confidence = pd.to_numeric(batch["confidence"], errors="coerce")
        order = pd.DataFrame({"c": confidence, "uri": batch["uri"].astype(str)}).sort_values(
            ["c", "uri"], kind="stable", na_position="first"
        )
        for i in order.index[:least_confident]:
            reasons[i].append("least-confident")
    if threshold is not None:
        proba = pd.to_numeric(batch["critical_proba"], errors="coerce")
        distance = (proba - threshold).abs()
        near = (distance <= margin + _EPS).fillna(False).to_numpy()
        near_rows = _first(np.flatnonzero(near), distance.to_numpy(), near_threshold, batch["uri"], NEAR)
        for i in near_rows:
            reasons[i].append(NEAR)
    novel = np.flatnonzero(batch["novel"].fillna(False).astype(bool).to_numpy())
    novelty = -pd.to_numeric(batch.get("novelty", pd.Series(np.nan, index=batch.index)), errors="coerce")
    for i in _first(novel, novelty.to_numpy(), most_novel, batch["uri"], "novel"):
        reasons[i].append("novel")
    if drifted and drift_sample > 0:
        rest = [i for i, r in enumerate(reasons) if not r]
        rng = np.random.default_rng(seed)
        for i in rng.choice(rest, size=min(drift_sample, len(rest)), replace=False) if rest else []:
            reasons[int(i)].append("drift-sample")

    picked = [i for i, r in enumerate(reasons) if r]
    out = batch.iloc[picked].copy()
    out["reasons"] = pd.Series([reasons[i] for i in picked], index=out.index, dtype=object)
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- queue


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy numbers as Python ones, NaN/NA as None."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # list-like
        pass
    return value


def _merge_reasons(old: list[str], new: list[str]) -> list[str]:
    merged = list(dict.fromkeys([*old, *new]))
    rank = {r: i for i, r in enumerate(REASONS)}
    return sorted(merged, key=lambda r: rank.get(r, len(rank)))


def _extension(uri: str) -> str:
    ext = Path(uri.rsplit("/", 1)[-1]).suffix.lower()
    return ext if ext in IMAGE_EXTENSIONS else ""


class _Changed(Exception):
    """An image whose bytes cannot be had or no longer match their hash."""


class ReviewQueue(ABC):
    """Entries ``queue/<sha256>.json`` (and images) under a folder or an S3 prefix; see the module docstring."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._s3: BaseClient | None = None

    @abstractmethod
    def describe(self) -> str:
        """Where the queue is."""

    @abstractmethod
    def _read(self, rel: str) -> bytes | None:
        """The bytes at ``rel`` (relative to the queue), None when absent."""

    @abstractmethod
    def _write(self, rel: str, data: bytes, content_type: str) -> None:
        """Write ``data`` at ``rel`` atomically."""

    @abstractmethod
    def _exists(self, rel: str) -> bool:
        """Whether ``rel`` exists."""

    @abstractmethod
    def _entry_names(self) -> list[str]:
        """Relative names of the entry files (``queue/*.json``)."""

    @abstractmethod
    def _image_ref(self, uri: str, sha256: str, local: Path | None) -> str:
        """Store (or reference) the image of ``uri`` and return what the entry's ``image`` says."""

    # ---------------------------------------------------------------------------------------- public

    def add(
        self,
        rows: pd.DataFrame,
        run_id: str,
        source: dict[str, Path] | None = None,
        *,
        origin: Literal["monitoring", "training"] = "monitoring",
        model_version: str | None = None,
    ) -> int:
        """Queue ``rows`` for run ``run_id``; returns how many are new.

        ``origin`` ``monitoring`` (the rows of :func:`select_for_review`; the entry names ``monitoring_run``) or
        ``training`` (the candidates of :func:`~steelqc.tasks.evaluation.label_issues.review_candidates`; the entry
        names ``training_run`` and keeps the row's ``label`` and ``split``); ``model_version``: the version that made
        the guess, when known. ``source`` maps a row's uri to a local copy (an S3 image fetched by the flow): a local
        queue copies the image from there instead of downloading it again. An image already queued gets its reasons
        merged, and the row's ``label`` when the entry has none (the entry is rewritten only when that changes it). A
        row whose image no longer has its hash (changed since it was hashed) is skipped with a warning.
        """
        if origin not in ORIGINS:
            raise ValueError(f"review queue: origin {origin!r} is not one of {sorted(ORIGINS)}")
        source = source or {}
        added = 0
        for row in rows.to_dict("records"):
            sha = str(row["sha256"])
            if not _SHA256.match(sha):
                raise ValueError(f"review queue: {sha!r} is not a SHA-256 hex digest ({row.get('uri')})")
            rel = f"queue/{sha}.json"
            if self._exists(f"done/{sha}.json"):  # labelled already (review_labels.py): in the reviewed source
                continue
            given = row.get("reasons")
            reasons = [str(r) for r in given] if isinstance(given, list | tuple | np.ndarray) else []
            raw = self._read(rel)
            if raw is not None:
                entry = json.loads(raw)
                merged = {**entry, "reasons": _merge_reasons(entry.get("reasons", []), reasons)}
                if entry.get("label") is None and _plain(row.get("label")) is not None:
                    merged["label"] = _plain(row.get("label"))
                if merged != entry:
                    self._write(rel, json.dumps(merged, indent=1).encode(), "application/json")
                continue
            uri = str(row["uri"])
            try:
                image = self._image_ref(uri, sha, source.get(uri))
            except _Changed as exc:
                log.warning("review queue: %s not queued: %s", uri, exc)
                continue
            entry = {
                "image": image,
                "source_uri": uri,
                "sha256": sha,
                "reasons": _merge_reasons([], reasons),
                "predicted": _plain(row.get("predicted")),
                "confidence": _plain(row.get("confidence")),
                "critical_proba": _plain(row.get("critical_proba")),
                ORIGINS[origin]: run_id,
                "queued_at": utc_now(),
            }
            if "novelty" in row:
                entry["novelty"] = _plain(row["novelty"])
            if origin == "training":
                entry["label"], entry["split"] = _plain(row.get("label")), _plain(row.get("split"))
            if model_version is not None:
                entry["model_version"] = str(model_version)
            self._write(rel, json.dumps(entry, indent=1).encode(), "application/json")
            added += 1
        log.info(
            "review queue %s: %d new, %d rows given (%s run %s)", self.describe(), added, len(rows), origin, run_id
        )
        return added

    def list(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (by ``queued_at``, then hash); an unreadable entry is skipped with a warning."""
        entries = []
        for rel in self._entry_names():
            raw = self._read(rel)
            try:
                entry = json.loads(raw) if raw is not None else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                entry = None
            if not isinstance(entry, dict):
                log.warning("review queue %s: %s is not a queue entry, skipped", self.describe(), rel)
                continue
            entries.append(entry)
        return sorted(entries, key=lambda e: (str(e.get("queued_at", "")), str(e.get("sha256", ""))))

    # ---------------------------------------------------------------------------------------- helpers

    def _image_bytes(self, uri: str, sha256: str, local: Path | None) -> bytes:
        """The image's bytes (from ``local``, the local uri, or S3), checked against ``sha256``."""
        limit = self.settings.max_image_bytes
        if local is not None or not uri.startswith("s3://"):
            path = local if local is not None else Path(uri)
            try:
                data = read_regular_file(path, limit)
            except OSError as exc:
                raise _Changed(f"{path} cannot be read ({exc})") from exc
        else:
            bucket, key = parse_s3_uri(uri)
            try:
                data = self._client().get_object(Bucket=bucket, Key=key)["Body"].read(limit + 1)
            except (ClientError, BotoCoreError) as exc:
                raise _Changed(f"download failed ({exc})") from exc
        if len(data) > limit or hashlib.sha256(data).hexdigest() != sha256:
            raise _Changed(f"its content no longer has SHA-256 {sha256}")
        return data

    def _client(self) -> BaseClient:
        if self._s3 is None:
            self._s3 = s3_client(self.settings)
        return self._s3


class LocalReviewQueue(ReviewQueue):
    """A review queue in a local folder; images are copied into ``images/``."""

    def __init__(self, root: Path, settings: Settings):
        super().__init__(settings)
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, rel: str, data: bytes, content_type: str) -> None:
        atomic_write_bytes(self.root / rel, data)

    def _exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def _entry_names(self) -> list[str]:
        folder = self.root / "queue"
        return sorted(f"queue/{p.name}" for p in folder.glob("*.json")) if folder.is_dir() else []

    def _image_ref(self, uri: str, sha256: str, local: Path | None) -> str:
        rel = f"images/{sha256}{_extension(uri)}"
        if not self._exists(rel):
            self._write(rel, self._image_bytes(uri, sha256, local), "application/octet-stream")
        return str(self.root / rel)


class S3ReviewQueue(ReviewQueue):
    """A review queue under ``s3://bucket/prefix``; S3 images are referenced, local ones uploaded."""

    def __init__(self, target: str, client: BaseClient, settings: Settings):
        super().__init__(settings)
        self.target = target.rstrip("/")
        self.bucket, prefix = parse_s3_uri(self.target)
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._s3 = client

    def describe(self) -> str:
        return self.target

    def _read(self, rel: str) -> bytes | None:
        try:
            return self._client().get_object(Bucket=self.bucket, Key=self.prefix + rel)["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                return None
            raise ReviewQueueError(f"review queue {self.target}: cannot read {rel} ({exc})") from exc
        except BotoCoreError as exc:
            raise ReviewQueueError(f"review queue {self.target}: cannot read {rel} ({exc})") from exc

    def _write(self, rel: str, data: bytes, content_type: str) -> None:
        try:
            self._client().put_object(Bucket=self.bucket, Key=self.prefix + rel, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise ReviewQueueError(f"review queue {self.target}: cannot write {rel} ({exc})") from exc

    def _exists(self, rel: str) -> bool:
        try:
            self._client().head_object(Bucket=self.bucket, Key=self.prefix + rel)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise ReviewQueueError(f"review queue {self.target}: cannot check {rel} ({exc})") from exc
        return True

    def _entry_names(self) -> list[str]:
        names: list[str] = []
        try:
            pages = (
                self._client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.bucket, Prefix=f"{self.prefix}queue/")
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) :]
                    if rel.endswith(".json") and "/" not in rel[len("queue/") :]:
                        names.append(rel)
        except (ClientError, BotoCoreError) as exc:
            raise ReviewQueueError(f"review queue {self.target}: listing failed ({exc})") from exc
        return sorted(names)

    def _image_ref(self, uri: str, sha256: str, local: Path | None) -> str:
        if uri.startswith("s3://"):
            return uri
        rel = f"images/{sha256}{_extension(uri)}"
        if not self._exists(rel):
            self._write(rel, self._image_bytes(uri, sha256, local), "application/octet-stream")
        return f"s3://{self.bucket}/{self.prefix}{rel}"


def open_review_queue(target: str, settings: Settings) -> ReviewQueue:
    """The review queue at ``target``: a folder (created) or ``s3://bucket/prefix`` (its bucket must answer)."""
    if target.startswith("s3://"):
        client = s3_client(settings)
        try:
            check_bucket(client, target, settings, what="review queue")
        except InboxError as exc:
            raise ReviewQueueError(str(exc)) from exc
        return S3ReviewQueue(target, client, settings)
    if "://" in target:
        raise ReviewQueueError(f"review queue {target}: a folder or s3://bucket/prefix is expected")
    root = Path(target).expanduser().absolute()
    try:
        (root / "queue").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReviewQueueError(f"review queue {target}: cannot be created ({exc.strerror or exc})") from exc
    return LocalReviewQueue(root, settings)
