"""The drift monitor's work without Prefect: take the new images, score them, check drift, record the decision.

One monitoring run, in order (``flows/monitoring.py`` wires these together and adds retries and artifacts):

1. :func:`monitor_lock`: one monitor at a time per ``STEELQC_HOME`` (``monitoring/monitor.lock``, an ``flock``
   released by the kernel when its process dies, so a killed monitor never leaves a stale lock).
2. :func:`take_batch`: the inbox's images the ledger has not decided on (``Ledger.pending``), at most
   ``monitor_max_images``, hashed through :meth:`Inbox.fetch` (an S3 image is downloaded once, into the run
   folder's ``staging/``, deleted at the end). Unreadable files are quarantined by uri; a failed S3 download is
   left pending for the next run (it may be the network, not the image).
3. Fewer than ``monitor_min_images`` new images: nothing is recorded and the images stay pending.
4. :func:`load_champion` (its reference: stored or computed, :mod:`steelqc.model_registry.reference`),
   :func:`score_batch` (features; an image the decoder refuses is quarantined with the reason),
   :func:`check_batch` (Evidently, the HTML report in the run folder).
5. :func:`open_record` (an MLflow run in ``monitoring_experiment`` with the figures), :func:`decide` (cool-down
   read from those runs, fingerprints), :func:`record_decision` (tagged *before* a retrain is started, so a
   monitor killed right after starting one still counts it), :func:`start_retrain`, :func:`queue_for_review`,
   :func:`close_record` (report, quarantine.csv, picks as artifacts).
6. :func:`commit_ledger`: the ledger is saved (atomically) only now, so a monitor killed mid-batch takes the same
   images next time, and each image is in the ledger exactly once.

Run folders: ``STEELQC_HOME/monitoring/runs/<id>/``; ledger ``STEELQC_HOME/monitoring/ledger.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from prefect.deployments import run_deployment

from steelqc.model_registry import packaging
from steelqc.model_registry.packaging import SteelDefectModel
from steelqc.model_registry.reference import champion_reference
from steelqc.model_registry.store import client as mlflow_client
from steelqc.model_registry.store import configure
from steelqc.monitoring.drift import DriftResult, check_drift
from steelqc.monitoring.inbox import Inbox, InboxError, InboxItem, sha256_of
from steelqc.monitoring.ledger import Duplicate, Ledger, unreadable_key, utc_now
from steelqc.monitoring.review import open_review_queue, select_for_review
from steelqc.monitoring.trigger import RetrainDecision, decide_retrain
from steelqc.tasks.config import NIGHTLY_DATA, Settings, mask_url
from steelqc.tasks.data.ingest import IngestError
from steelqc.tasks.data.sources import ingest_sources, parse_sources
from steelqc.tasks.features import Reference, extract, feature_workers, features_frame

log = logging.getLogger(__name__)

RETRAIN_DEPLOYMENT = "training-pipeline/nightly-retrain"
TAG_DECISION, TAG_REASON = "steelqc.decision", "steelqc.reason"
TAG_RETRAIN_RUN, TAG_VERSION, TAG_BATCH = "steelqc.retrain_flow_run_id", "steelqc.model_version", "steelqc.batch"
RETRAIN_DECISION = "start"
"""The decision tag that counts as a drift-triggered retrain for the cool-down (set before the retrain starts)."""
MAX_TAG = 4900  # MLflow's limit on a tag value is 5000 characters
REPORT_FILE, QUARANTINE_FILE, PICKS_FILE = "drift_report.html", "quarantine.csv", "review_picks.csv"


class MonitorBusy(RuntimeError):
    """Another monitor holds the lock (the message names its process)."""


class NoChampion(ValueError):
    """No model version has the ``champion`` alias: nothing to compare new images with."""


# ------------------------------------------------------------------------------------------- places


def monitoring_dir(settings: Settings) -> Path:
    return settings.home / "monitoring"


def ledger_path(settings: Settings) -> Path:
    return monitoring_dir(settings) / "ledger.json"


def new_run_folder(settings: Settings) -> Path:
    """A fresh ``STEELQC_HOME/monitoring/runs/<UTC time>-<random>`` folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = monitoring_dir(settings) / "runs" / f"monitor-{stamp}-{os.urandom(3).hex()}"
    path.mkdir(parents=True, exist_ok=False)
    return path


@contextlib.contextmanager
def monitor_lock(settings: Settings) -> Iterator[Path]:
    """Hold ``STEELQC_HOME/monitoring/monitor.lock`` (an exclusive ``flock``); :class:`MonitorBusy` when another
    live process holds it. The kernel releases it when the holder dies, however it dies."""
    path = monitoring_dir(settings) / "monitor.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise MonitorBusy(
            f"another drift monitor is running (lock {path} held by: {holder}); wait for it to finish"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}\n".encode(), 0)
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------------------------------- the batch


@dataclass
class QuarantinedImage:
    """An image left out of the drift check, with why (``sha256`` is :func:`unreadable_key` when unhashable)."""

    uri: str
    sha256: str
    reason: str


@dataclass
class Batch:
    """The new images of one run: ``items`` (item, sha256) in inbox order, their local copies, in-batch
    duplicates, files quarantined before scoring, and uris left pending after a failed download."""

    source: str
    listed: int
    items: list[tuple[InboxItem, str]]
    local: dict[str, Path]
    duplicates: list[Duplicate] = field(default_factory=list)
    quarantined: list[QuarantinedImage] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """First and last image of the batch (the ``steelqc.batch`` tag)."""
        if not self.items:
            return "empty"
        first, last = self.items[0][0].uri, self.items[-1][0].uri
        return f"{len(self.items)} images: {first} .. {last}"


def _deferred(item: InboxItem, exc: Exception) -> bool:
    """A failed S3 download (not a refused file): leave the image pending rather than quarantine it for good."""
    text = str(exc)
    return item.uri.startswith("s3://") and "download failed" in text


def _pending_capped(
    ledger: Ledger,
    items: list[InboxItem],
    hasher: Callable[[InboxItem], str],
    on_error: Callable[[InboxItem, Exception], None],
    most: int,
) -> tuple[list[tuple[InboxItem, str]], list[Duplicate]]:
    """:meth:`Ledger.pending` over chunks of ``items`` until ``most`` new images are found (the rest is not even
    hashed); duplicates are kept only for content taken."""
    new: list[tuple[InboxItem, str]] = []
    duplicates: list[Duplicate] = []
    first: dict[str, str] = {}
    for start in range(0, len(items), most):
        found, dups = ledger.pending(items[start : start + most], hasher, on_error)
        for item, sha in found:
            if sha in first:
                duplicates.append(Duplicate(item, sha, first[sha]))
            elif len(new) < most:
                first[sha] = item.uri
                new.append((item, sha))
        duplicates += [d for d in dups if d.sha256 in first]
        if len(new) >= most:
            break
    return new, duplicates


def take_batch(inbox: Inbox, ledger: Ledger, settings: Settings, staging: Path) -> Batch:
    """The inbox's images the ledger has not decided on (at most ``monitor_max_images``), hashed via fetch, each
    with a local copy; see the module docstring for what is quarantined and what is left pending."""
    items = inbox.list_items()
    batch = Batch(inbox.describe(), len(items), [], {})

    def hasher(item: InboxItem) -> str:
        path = inbox.fetch(item, staging)
        batch.local[item.uri] = path
        return sha256_of(path)

    def on_error(item: InboxItem, exc: Exception) -> None:
        if _deferred(item, exc):
            log.warning("%s left pending: %s", item.uri, exc)
            batch.deferred.append(item.uri)
        else:
            batch.quarantined.append(QuarantinedImage(item.uri, unreadable_key(item), str(exc)))

    new, batch.duplicates = _pending_capped(ledger, items, hasher, on_error, settings.monitor_max_images)
    for item, sha in new:  # hashes from the ledger's cache: fetch them now
        if item.uri in batch.local:
            batch.items.append((item, sha))
            continue
        try:
            batch.local[item.uri] = inbox.fetch(item, staging)
            batch.items.append((item, sha))
        except (InboxError, OSError) as exc:
            on_error(item, exc)
    kept = {sha for _, sha in batch.items}
    batch.duplicates = [d for d in batch.duplicates if d.sha256 in kept]
    log.info(
        "inbox %s: %d listed, %d new, %d duplicates, %d quarantined, %d left pending",
        batch.source, len(items), len(batch.items), len(batch.duplicates), len(batch.quarantined),
        len(batch.deferred),
    )  # fmt: skip
    return batch


# ------------------------------------------------------------------------------------------- scoring


@dataclass
class Champion:
    """The champion version, its model and its drift reference (``reference_source``: stored or computed)."""

    version: ModelVersion
    model: SteelDefectModel
    reference: Reference
    reference_source: str

    @property
    def fingerprint(self) -> str | None:
        return (self.version.tags or {}).get("fingerprint")


def load_champion(settings: Settings) -> Champion:
    """The ``champion`` version of ``registered_model``, loaded safely, with its reference (may raise
    :class:`NoChampion` or ``MissingReference``)."""
    configure(settings)
    client = mlflow_client(settings)
    name = settings.registered_model
    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException as exc:
        raise NoChampion(
            f"no champion of {name} in {mask_url(settings.mlflow_uri)}: train one first (steelqc train)"
        ) from exc
    model = packaging.load(f"models:/{name}/{version.version}")
    reference, source = champion_reference(client, settings, model, version)
    log.info("champion %s v%s; drift reference %s", name, version.version, source)
    return Champion(version, model, reference, source)


def score_batch(champion: Champion, batch: Batch, settings: Settings) -> tuple[pd.DataFrame, list[QuarantinedImage]]:
    """The features of the batch's images (one row per readable image, with ``uri`` and ``sha256``) and the
    images the decoder refused, with the reason."""
    model = champion.model
    paths = [str(batch.local[item.uri]) for item, _ in batch.items]
    workers = feature_workers(settings.monitor_workers, model.device)
    raw = extract(
        model.model, model.architecture, model.spec, paths, batch_size=settings.monitor_batch_size,
        device=model.device, num_workers=workers, max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )  # fmt: skip
    by_path = {p: (item.uri, sha) for p, (item, sha) in zip(paths, batch.items, strict=True)}
    quarantined = [
        QuarantinedImage(*by_path[path], f"unreadable: {error}")
        for path, error in zip(raw.paths, raw.errors, strict=True)
        if error
    ]
    frame = features_frame(
        raw, champion.reference.projection, champion.reference.novelty, model.label_space, model.threshold
    )
    frame.insert(0, "uri", [by_path[p][0] for p in frame["path"]])
    frame.insert(1, "sha256", [by_path[p][1] for p in frame["path"]])
    return frame, quarantined


def check_batch(champion: Champion, frame: pd.DataFrame, settings: Settings, run_dir: Path) -> DriftResult | None:
    """The drift check against the champion's reference, the HTML report in ``run_dir`` (None: no usable image)."""
    if frame.empty:
        return None
    return check_drift(champion.reference.rows(None), frame, settings.drift, html=run_dir / REPORT_FILE)


def nightly_fingerprint(settings: Settings) -> str | None:
    """The fingerprint the nightly run would train on (every nightly source, the ``reviewed`` one included: the
    fingerprint a champion trained on them carries), None when they hold no valid labelled image."""
    data = settings.resolve_data(NIGHTLY_DATA)
    try:
        sources = parse_sources(data)
        if not all(s.path.is_dir() for s in sources):
            return None
        result = ingest_sources(sources, settings)
    except IngestError as exc:
        log.warning("nightly data %s cannot be read as a data set: %s", data, exc)
        return None
    return result.fingerprint if len(result.manifest) else None


# ------------------------------------------------------------------------------------------- the record


def monitoring_experiment(client: MlflowClient, settings: Settings) -> str:
    """The id of ``monitoring_experiment`` (created with artifacts under STEELQC_HOME for a local store)."""
    experiment = client.get_experiment_by_name(settings.monitoring_experiment)
    if experiment is not None:
        return experiment.experiment_id
    uri = settings.mlflow_uri
    location = None if uri.startswith(("http:", "https:", "databricks")) else settings.artifact_root.as_uri()
    try:
        return client.create_experiment(settings.monitoring_experiment, artifact_location=location)
    except MlflowException:  # created meanwhile by another machine
        return client.get_experiment_by_name(settings.monitoring_experiment).experiment_id


def last_trigger(client: MlflowClient, settings: Settings) -> datetime | None:
    """When the last drift-triggered retrain started (any machine sharing the tracking store), None if never."""
    experiment = client.get_experiment_by_name(settings.monitoring_experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_DECISION}` = '{RETRAIN_DECISION}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return datetime.fromtimestamp(runs[0].info.start_time / 1000, UTC) if runs else None


def _metrics(drift: DriftResult | None, n_images: int, quarantined: int, novel: int) -> dict[str, float]:
    figures: dict[str, float | None] = {"n_images": n_images, "quarantined": quarantined, "novel": novel}
    if drift is not None:
        figures |= {
            "drifted_share": drift.drifted_share,
            "embedding_drift": drift.embedding_drift,
            "confidence_drop": drift.confidence_drop,
            "class_mix_shift": drift.class_mix_shift,
            "drift_detected": float(drift.drift_detected),
        }
    return {k: float(v) for k, v in figures.items() if v is not None}


def open_record(
    client: MlflowClient,
    settings: Settings,
    run_dir: Path,
    batch: Batch,
    champion: Champion,
    figures: tuple[DriftResult | None, int, int, int],
) -> str:
    """A new MLflow run in ``monitoring_experiment`` with the batch, the champion, the rule and the figures
    (``figures``: drift, images scored, quarantined, novel); returns its id. Left RUNNING until
    :func:`close_record`."""
    drift, n_images, quarantined, novel = figures
    tags = {
        TAG_BATCH: batch.describe()[:MAX_TAG],
        TAG_VERSION: str(champion.version.version),
        "steelqc.source": batch.source,
        "steelqc.run_dir": str(run_dir),
        "steelqc.host": socket.gethostname(),
        "mlflow.runName": run_dir.name,
    }
    run = client.create_run(monitoring_experiment(client, settings), tags=tags)
    run_id = run.info.run_id
    params = {
        "source": batch.source,
        "model_version": champion.version.version,
        "reference": champion.reference_source,
        **{f"drift.{k}": v for k, v in settings.drift.model_dump().items()},
    }
    for key, value in params.items():
        client.log_param(run_id, key, str(value)[:6000])
    for key, value in _metrics(drift, n_images, quarantined, novel).items():
        client.log_metric(run_id, key, value)
    return run_id


def decide(client: MlflowClient, settings: Settings, drift: DriftResult | None, champion: Champion) -> RetrainDecision:
    """The retrain decision for this batch (:func:`decide_retrain` on what MLflow and the nightly data say)."""
    drifted = drift is not None and drift.drift_detected
    return decide_retrain(
        drift_detected=drifted,
        last_trigger=last_trigger(client, settings) if drifted else None,
        now=datetime.now(UTC),
        cooldown_s=settings.retrain_cooldown_s,
        nightly_fingerprint=nightly_fingerprint(settings) if drifted else None,
        champion_fingerprint=champion.fingerprint,
        retrain_without_new_labels=settings.retrain_without_new_labels,
    )


def record_decision(client: MlflowClient, run_id: str, decision: RetrainDecision, reason: str) -> None:
    """Tag the run with the decision and its reason (before acting on it: the cool-down reads these tags)."""
    client.set_tag(run_id, TAG_DECISION, decision.action)
    client.set_tag(run_id, TAG_REASON, reason[:MAX_TAG])


def start_retrain(reason: str, monitoring_run_id: str) -> str:
    """Start ``training-pipeline/nightly-retrain`` with ``reason`` (not waiting for it); returns its flow run id.

    The monitoring run id is the idempotency key: a retried call never starts a second run."""
    flow_run = run_deployment(
        RETRAIN_DEPLOYMENT,
        parameters={"reason": reason[:MAX_TAG]},
        timeout=0,
        idempotency_key=f"steelqc-drift-{monitoring_run_id}",
    )
    log.info("started %s: flow run %s (%s)", RETRAIN_DEPLOYMENT, flow_run.id, reason)
    return str(flow_run.id)


def review_picks(frame: pd.DataFrame, drifted: bool, settings: Settings, threshold: float | None) -> pd.DataFrame:
    """The rows to queue for labelling (:func:`select_for_review` with the settings)."""
    if frame.empty:
        return frame.assign(reasons=pd.Series(dtype=object))
    return select_for_review(
        frame,
        least_confident=settings.review_least_confident,
        margin=settings.review_margin,
        threshold=threshold,
        drifted=drifted,
        drift_sample=settings.review_drift_sample,
        seed=settings.seed,
        near_threshold=settings.review_near_threshold,
        most_novel=settings.review_novel,
    )


def queue_for_review(
    picks: pd.DataFrame, batch: Batch, settings: Settings, run_id: str, model_version: str | None = None
) -> int:
    """Add the picks to the review queue (``review_queue``), naming the monitoring run and the champion's version
    that made the guesses; returns how many entries are new."""
    if picks.empty:
        return 0
    queue = open_review_queue(settings.review_queue, settings)
    return queue.add(picks, run_id, source=batch.local, model_version=model_version)


def write_run_files(run_dir: Path, quarantined: list[QuarantinedImage], picks: pd.DataFrame) -> dict[str, Path]:
    """``quarantine.csv`` (uri, sha256, reason) and ``review_picks.csv`` in the run folder."""
    files = {"quarantine": run_dir / QUARANTINE_FILE, "picks": run_dir / PICKS_FILE}
    pd.DataFrame([q.__dict__ for q in quarantined], columns=["uri", "sha256", "reason"]).to_csv(
        files["quarantine"], index=False
    )
    columns = ["uri", "sha256", "reasons", "predicted", "confidence", "critical_proba", "novelty"]
    out = picks.reindex(columns=columns).copy()
    out["reasons"] = [";".join(r) if isinstance(r, list) else "" for r in out["reasons"]]
    out.to_csv(files["picks"], index=False)
    return files


def close_record(
    client: MlflowClient, run_id: str, run_dir: Path, retrain_flow_run_id: str | None, extra: dict[str, str]
) -> None:
    """Log the run folder's report, quarantine and picks, the retrain's flow run id and ``extra`` tags; finish."""
    if retrain_flow_run_id:
        client.set_tag(run_id, TAG_RETRAIN_RUN, retrain_flow_run_id)
    for key, value in extra.items():
        client.set_tag(run_id, key, str(value)[:MAX_TAG])
    for name in (REPORT_FILE, QUARANTINE_FILE, PICKS_FILE):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    client.set_terminated(run_id, "FINISHED")


def commit_ledger(
    ledger: Ledger, batch: Batch, frame: pd.DataFrame, quarantined: list[QuarantinedImage], run_id: str
) -> None:
    """Record every image of the batch (processed, quarantined, duplicate) and save the ledger atomically."""
    bad = {q.uri for q in quarantined}
    entries: list[dict[str, Any]] = [
        {"sha256": sha, "uri": item.uri, "status": "processed", "run": run_id}
        for item, sha in batch.items
        if item.uri not in bad
    ]
    entries += [
        {"sha256": q.sha256, "uri": q.uri, "status": "quarantined", "reason": q.reason, "run": run_id}
        for q in quarantined
    ]
    entries += [
        {
            "sha256": d.sha256,
            "uri": d.item.uri,
            "status": "duplicate",
            "reason": f"copy of {d.first_uri}",
            "run": run_id,
        }
        for d in batch.duplicates
    ]
    ledger.record(entries)
    ledger.save()
    log.info("ledger %s: %d entries recorded (%d images in all)", ledger.path, len(entries), len(ledger))


# ------------------------------------------------------------------------------------------- the result


@dataclass
class MonitorResult:
    """What one monitoring run did; ``to_dict()`` is the JSON of ``steelqc monitor``."""

    source: str
    decision: str
    reason: str
    n_images: int = 0
    quarantined: int = 0
    duplicates: int = 0
    waiting: int = 0
    deferred: int = 0
    drift: DriftResult | None = None
    retrain_flow_run_id: str | None = None
    review_queued: int = 0
    review_picked: int = 0
    novel: int = 0
    monitoring_run_id: str | None = None
    model_version: str | None = None
    reference_source: str | None = None
    run_dir: str | None = None
    quarantine_file: str | None = None
    alert: dict[str, Any] | None = None
    flow_run_id: str | None = None
    seconds: float | None = None
    picks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        drift = self.drift
        return {
            "drift_detected": bool(drift and drift.drift_detected),
            "drifted_share": drift.drifted_share if drift else None,
            "embedding_drift": drift.embedding_drift if drift else None,
            "n_images": self.n_images,
            "quarantined": self.quarantined,
            "report": drift.report if drift else None,
            "retrain_triggered": self.retrain_flow_run_id is not None,
            "reason": self.reason,
            "decision": self.decision,
            "waiting": self.waiting,
            "review_queued": self.review_queued,
            "review_picked": self.review_picked,
            "novel": self.novel,
            "retrain_flow_run_id": self.retrain_flow_run_id,
            "monitoring_run_id": self.monitoring_run_id,
            "model_version": self.model_version,
            "reference_source": self.reference_source,
            "duplicates": self.duplicates,
            "deferred": self.deferred,
            "confidence_drop": drift.confidence_drop if drift else None,
            "class_mix_shift": drift.class_mix_shift if drift else None,
            "class_mix": drift.class_mix if drift else None,
            "drifted_features": drift.drifted_features if drift else [],
            "drift_reasons": drift.reasons if drift else [],
            "source": self.source,
            "run_dir": self.run_dir,
            "quarantine_file": self.quarantine_file,
            "alert": self.alert,
            "flow_run_id": self.flow_run_id,
            "seconds": self.seconds,
            "picks": self.picks,
        }


def history(settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    """The latest ``limit`` monitoring decisions, newest first, from the tracking store (any machine's)."""
    configure(settings)
    client = mlflow_client(settings)
    experiment = client.get_experiment_by_name(settings.monitoring_experiment)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
    out = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        out.append(
            {
                "time": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(timespec="seconds"),
                "monitoring_run_id": run.info.run_id,
                "status": run.info.status,
                "decision": tags.get(TAG_DECISION),
                "reason": tags.get(TAG_REASON),
                "model_version": tags.get(TAG_VERSION),
                "retrain_flow_run_id": tags.get(TAG_RETRAIN_RUN),
                "batch": tags.get(TAG_BATCH),
                "source": tags.get("steelqc.source"),
                **{k: metrics.get(k) for k in ("n_images", "quarantined", "drifted_share", "embedding_drift")},
                **{k: metrics.get(k) for k in ("confidence_drop", "class_mix_shift", "novel")},
            }
        )
    return out
