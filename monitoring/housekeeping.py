"""`steelqc gc`: bound what ``STEELQC_HOME`` holds (README "Keeping it running").

:func:`collect` puts together what the registry needs (:mod:`steelqc.model_registry.retention`), the folders, logs
and cache entries that may go (:mod:`steelqc.tasks.housekeeping`) and the review queue's stale entries: images the
monitor or a training run queued more than ``gc.review_days`` ago that nobody has voted on (a local queue only,
under its lock). Labelled records (``done/``) stay: they keep a reviewed image from being queued again.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlflow import MlflowClient

from steelqc.model_registry.retention import needed_run_folders
from steelqc.monitoring.review_labels import LabelDesk
from steelqc.tasks.config import Settings
from steelqc.tasks.housekeeping import GcPlan, Removal, apply_plan, plan_gc, tree_bytes

log = logging.getLogger(__name__)


def _queued_at(entry: dict) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(str(entry.get("queued_at")))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _entry_files(desk: LabelDesk, entry: dict) -> list[Path]:
    """The entry's JSON and the queue's own copy of its image (never an image outside the queue)."""
    files = [desk.root / "queue" / f"{entry['sha256']}.json"]
    image = Path(str(entry.get("image", "")))
    if image.is_absolute() and image.parent == desk.root / "images":
        files.append(image)
    return files


def expire_review(settings: Settings, now: datetime, apply: bool, plan: GcPlan) -> None:
    """Drop (``apply``) or list the queued images nobody voted on that were queued over ``gc.review_days`` ago."""
    days = settings.gc.review_days
    if days <= 0 or "://" in settings.review_queue or not Path(settings.review_queue).is_dir():
        return
    desk, cutoff = LabelDesk.open(settings), now - timedelta(days=days)
    with desk.locked() if apply else contextlib.nullcontext():  # a dry run only reads
        for sha, entry in desk.queued().items():
            queued = _queued_at(entry)
            if entry.get("labels") or queued is None or queued >= cutoff:
                continue
            for path in _entry_files(desk, entry):
                kind = "review" if path.suffix == ".json" else "review-image"
                plan.removals.append(Removal(str(path), kind, tree_bytes(path), f"queued over {days} days, no vote"))
                if apply:
                    path.unlink(missing_ok=True)
            log.debug("gc: review entry %s queued %s expired", sha[:12], queued)


def collect(settings: Settings, client: MlflowClient, dry_run: bool) -> GcPlan:
    """What gc removes (and, unless ``dry_run``, removes it); the registry is read first and a failure there
    stops everything."""
    plan = plan_gc(settings, needed_run_folders(client))
    if not dry_run:
        roots = [settings.home, settings.cache.root(settings.home)]
        if settings.decisions_dir is not None:
            roots.append(settings.decisions_dir)
        apply_plan(plan, settings.gc.logs_max_bytes // 2, roots)
    expire_review(settings, datetime.now(UTC), not dry_run, plan)
    for item in plan.removals:
        log.info("gc: %s %s %s (%d bytes): %s", "would" if dry_run else "did", item.action, item.path, item.bytes,
                 item.reason)  # fmt: skip
    return plan
