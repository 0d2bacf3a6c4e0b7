"""The ``drift-monitor`` Prefect flow: new factory images → features → drift check → retrain, alert, review queue.

Thin wiring over :mod:`steelqc.monitoring.monitor` (module docstring there: the order of the work, what is
recorded when, why the ledger is saved last). Prefect adds retries on the inbox's I/O, the lock-free
``concurrency_limit=1`` of the ``drift-monitor/hourly`` deployment, the drift alert and a markdown artifact
(key ``drift-monitor``) with the decision, its reasons, the figures, the class mix, the review picks and links.
The flow returns a :class:`MonitorResult`; its ``to_dict()`` is the JSON of ``steelqc monitor``.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from steelqc.flows import alerts
from steelqc.flows.steps import settings_for
from steelqc.model_registry.store import client
from steelqc.monitoring import monitor
from steelqc.monitoring.drift import DriftResult
from steelqc.monitoring.inbox import open_inbox
from steelqc.monitoring.ledger import Ledger
from steelqc.monitoring.monitor import Batch, Champion, MonitorResult, QuarantinedImage
from steelqc.monitoring.trigger import RetrainDecision
from steelqc.tasks import redact
from steelqc.tasks.config import Settings

log = logging.getLogger("flows.monitoring")

FLOW_NAME = "drift-monitor"
PICKS_SHOWN = 20


# ------------------------------------------------------------------------------------------------ tasks


@task(name="take-new-images", retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)
def take_batch_step(source: str, run_dir: str, overrides: dict) -> tuple[Ledger, Batch]:
    """List the inbox and hash/fetch the images the ledger has not decided on (retried: listing and downloads)."""
    settings = settings_for(overrides)
    ledger = Ledger.load(monitor.ledger_path(settings))
    inbox = open_inbox(source, settings)
    return ledger, monitor.take_batch(inbox, ledger, settings, Path(run_dir) / "staging")


@task(name="load-champion", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def champion_step(overrides: dict) -> Champion:
    return monitor.load_champion(settings_for(overrides))


@task(name="features", cache_policy=NO_CACHE)
def features_step(champion: Champion, batch: Batch, overrides: dict) -> tuple[pd.DataFrame, list[QuarantinedImage]]:
    """Photometric features, the model's view and novelty of every new image; unreadable ones quarantined."""
    return monitor.score_batch(champion, batch, settings_for(overrides))


@task(name="drift-check", cache_policy=NO_CACHE)
def drift_step(champion: Champion, frame: pd.DataFrame, run_dir: str, overrides: dict) -> DriftResult | None:
    return monitor.check_batch(champion, frame, settings_for(overrides), Path(run_dir))


@task(name="record-and-decide", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def decide_step(
    run_dir: str, batch: Batch, champion: Champion, drift: DriftResult | None, counts: tuple, overrides: dict
) -> tuple[str, RetrainDecision]:
    """The monitoring run in MLflow with the figures, then the retrain decision, tagged on it before any action."""
    settings = settings_for(overrides)
    mlflow_client = client(settings)
    run_id = monitor.open_record(mlflow_client, settings, Path(run_dir), batch, champion, (drift, *counts))
    decision = monitor.decide(mlflow_client, settings, drift, champion)
    monitor.record_decision(mlflow_client, run_id, decision, _reason(drift, decision))
    return run_id, decision


@task(name="start-retrain", retries=3, retry_delay_seconds=2)
def retrain_step(reason: str, monitoring_run_id: str) -> str:
    """``run_deployment`` of the nightly retrain (idempotent per monitoring run, so retries are safe)."""
    return monitor.start_retrain(reason, monitoring_run_id)


@task(name="review-queue", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def review_step(picks: pd.DataFrame, batch: Batch, run_id: str, version: str | None, overrides: dict) -> int:
    return monitor.queue_for_review(picks, batch, settings_for(overrides), run_id, version)


@task(name="close-record", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def close_step(run_id: str, run_dir: str, retrain_run: str | None, extra: dict, overrides: dict) -> None:
    monitor.close_record(client(settings_for(overrides)), run_id, Path(run_dir), retrain_run, extra)


@task(name="save-ledger", cache_policy=NO_CACHE)
def ledger_step(ledger: Ledger, batch: Batch, frame: pd.DataFrame, quarantined: list, run_id: str) -> None:
    monitor.commit_ledger(ledger, batch, frame, quarantined, run_id)


# ------------------------------------------------------------------------------------------------- flow


def _reason(drift: DriftResult | None, decision: RetrainDecision) -> str:
    if drift is None:
        return "no readable image in the batch: no drift check"
    return drift.reason if decision.action == "none" else f"{drift.reason}; {decision.reason}"


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


@flow(name=FLOW_NAME, log_prints=False)
def drift_monitor(incoming: str | None = None, settings_overrides: dict | None = None) -> MonitorResult:
    """Check the new images in ``incoming`` (default: the ``monitor_inbox`` setting) for drift against the
    champion's reference; on drift start the nightly retrain (cool-down) or ask for labels; queue images to label."""
    start, overrides = time.perf_counter(), settings_overrides or {}
    settings = settings_for(overrides)
    source = incoming or settings.inbox
    with monitor.monitor_lock(settings):
        run_dir = monitor.new_run_folder(settings)
        try:
            ledger, batch = take_batch_step(source, str(run_dir), overrides)
            if len(batch.items) < settings.monitor_min_images:
                shutil.rmtree(run_dir, ignore_errors=True)
                return _finish(_waiting(settings, batch), start)
            champion = champion_step(overrides)
            frame, bad = features_step(champion, batch, overrides)
            quarantined = [*batch.quarantined, *bad]
            drift = drift_step(champion, frame, str(run_dir), overrides)
            counts = (len(frame), len(quarantined), int(frame["novel"].sum()) if len(frame) else 0)
            run_id, decision = decide_step(str(run_dir), batch, champion, drift, counts, overrides)
            result = _result(source, batch, champion, drift, decision, run_dir, run_id, counts)
            _act(settings, result, decision)
            picks = monitor.review_picks(frame, result.to_dict()["drift_detected"], settings, champion.model.threshold)
            monitor.write_run_files(run_dir, quarantined, picks)
            result.review_picked, result.picks = len(picks), _picked(picks)
            result.review_queued = review_step(picks, batch, run_id, result.model_version, overrides)
            extra = {"steelqc.review_queued": str(result.review_queued), "steelqc.flow_run_id": str(_flow_run_id())}
            close_step(run_id, str(run_dir), result.retrain_flow_run_id, extra, overrides)
            ledger_step(ledger, batch, frame, quarantined, run_id)
        finally:
            shutil.rmtree(run_dir / "staging", ignore_errors=True)
    return _finish(result, start)


def _waiting(settings: Settings, batch: Batch) -> MonitorResult:
    """Too few new images: nothing recorded, the images stay pending."""
    need, have = settings.monitor_min_images, len(batch.items)
    reason = f"waiting for images: {have} new, the drift check needs {need}" if have else "no new images"
    log.info("%s (inbox %s)", reason, batch.source)
    return MonitorResult(batch.source, "waiting", reason, waiting=have, deferred=len(batch.deferred))


def _result(
    source: str,
    batch: Batch,
    champion: Champion,
    drift: DriftResult | None,
    decision: RetrainDecision,
    run_dir: Path,
    run_id: str,
    counts: tuple[int, int, int],
) -> MonitorResult:
    n_images, quarantined, novel = counts
    return MonitorResult(
        source, decision.action, _reason(drift, decision), n_images=n_images, quarantined=quarantined,
        duplicates=len(batch.duplicates), deferred=len(batch.deferred), drift=drift, novel=novel,
        monitoring_run_id=run_id, model_version=str(champion.version.version),
        reference_source=champion.reference_source, run_dir=str(run_dir),
        quarantine_file=str(run_dir / monitor.QUARANTINE_FILE), flow_run_id=_flow_run_id(),
    )  # fmt: skip


def _act(settings: Settings, result: MonitorResult, decision: RetrainDecision) -> None:
    """Start the retrain, or raise the drift alert asking for labels (a cool-down skip only logs)."""
    figures = {
        "drifted_share": result.drift.drifted_share if result.drift else None,
        "embedding_drift": result.drift.embedding_drift if result.drift else None,
        "images": result.n_images,
        "monitoring_run": result.monitoring_run_id,
        "review_queue": settings.review_queue,
    }
    if decision.action == "start":
        result.retrain_flow_run_id = retrain_step(
            f"drift (monitoring run {result.monitoring_run_id}): {result.reason}", result.monitoring_run_id
        )
        subject = f"drift on {result.n_images} new images: retraining started"
        result.alert = alerts.notify(settings, "drift", subject, {**figures, "retrain": result.retrain_flow_run_id},
                                     result.flow_run_id)  # fmt: skip
    elif decision.action == "ask-for-labels":
        subject = f"drift on {result.n_images} new images: new labels needed before a retrain can help"
        result.alert = alerts.notify(
            settings, "drift", subject, {**figures, "why": decision.reason}, result.flow_run_id
        )
    elif decision.action == "skip-cooldown":
        log.warning("drift, no retrain: %s", decision.reason)


def _picked(picks: pd.DataFrame) -> list[dict]:
    columns = [c for c in ("uri", "sha256", "reasons", "predicted", "confidence", "novelty") if c in picks]
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in picks[columns].to_dict("records")
    ]


def _finish(result: MonitorResult, start: float) -> MonitorResult:
    result.seconds = round(time.perf_counter() - start, 1)
    create_markdown_artifact(
        markdown=redact.redact(summary_markdown(result)),
        key="drift-monitor",
        description=f"drift monitor: {result.decision}",
    )
    return result


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def summary_markdown(result: MonitorResult) -> str:
    """The ``drift-monitor`` markdown artifact: decision, reasons, figures, class mix, review picks, links."""
    d = result.to_dict()
    lines = [f"# Drift monitor: **{result.decision}**", "", f"**Why**: {result.reason}", ""]
    lines += ["| figure | value |", "|---|---|"]
    keys = ("n_images", "quarantined", "duplicates", "waiting", "drifted_share", "embedding_drift", "confidence_drop",
            "class_mix_shift", "novel", "review_queued", "model_version", "retrain_flow_run_id")  # fmt: skip
    lines += [f"| {k} | {_fmt(d.get(k))} |" for k in keys]
    for reason in d["drift_reasons"]:
        lines.append(f"\n- {reason}")
    if d["class_mix"]:
        lines += ["", "| predicted class | reference | this batch |", "|---|---|---|"]
        lines += [f"| {c} | {v['reference']:.3f} | {v['current']:.3f} |" for c, v in d["class_mix"].items()]
    if result.picks:
        lines += ["", "| picked for review | why | predicted | confidence |", "|---|---|---|---|"]
        for p in result.picks[:PICKS_SHOWN]:
            why = ", ".join(p.get("reasons") or [])
            lines.append(f"| `{p['uri']}` | {why} | {p.get('predicted')} | {_fmt(p.get('confidence'))} |")
    lines += ["", f"MLflow monitoring run: `{result.monitoring_run_id}` (experiment `steel-monitoring`)"]
    if d["report"]:
        lines.append(f"\nEvidently report: `{d['report']}` (also an MLflow artifact of the run)")
    if result.alert:
        lines.append(f"\nAlert: {result.alert.get('subject')}")
    return "\n".join(lines)
