"""Steps the training and tuning flows share: settings for a run, ingest, the run folder, the split; and the
training run's review candidates into the review queue.

Each is a Prefect task over plain values (paths, ids, dicts) that calls the work in ``tasks/``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from prefect import task

from steelqc.monitoring.review import open_review_queue
from steelqc.tasks import homeformat, redact
from steelqc.tasks.config import Settings, load_settings
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.prepare import split_run_folder
from steelqc.tasks.data.sources import parse_sources, sources_to_folder
from steelqc.tasks.evaluation.label_issues import (
    CANDIDATES_FILE,
    CONFIDENT_MISTAKE,
    PROBABILITIES_FILE,
    SUSPECTED_LABEL_ERROR,
    read_probabilities,
    review_candidates,
)
from steelqc.tasks.runs import find_resumable, read_state, write_state

log = logging.getLogger(__name__)


def settings_for(overrides: dict | None) -> Settings:
    """The settings of a run: the environment and files, then the run's overrides. The run's logs are redacted
    from here on (a flow run started by a worker never went through the CLI's logging set-up)."""
    settings = load_settings(**(overrides or {}))
    redact.install()
    redact.remember(redact.secrets_in_settings(settings))
    if settings.home.is_dir():
        homeformat.check_home(settings.home)  # written by a newer steelqc: refused; by an older one: migrated
    return settings


@task(name="ingest", retries=2, retry_delay_seconds=2)
def ingest_step(data: str | list[str], fmt: str, critical_class: str | None, settings_overrides: dict) -> dict:
    """Validate the data (one folder, or several sources ``NAME=DIR`` joined by class name) into a new run folder:
    manifest, masks, quarantine, fingerprint."""
    settings = settings_for(settings_overrides)
    sources = parse_sources(settings.resolve_data(data))
    log.info("data sources: %s", ", ".join(s.spec() for s in sources))
    result, summary = sources_to_folder(
        sources,
        settings,
        fmt,
        critical_class,
        prefix="train",
        require_valid=True,  # type: ignore[arg-type]
    )
    label_space = LabelSpace(result.class_names, result.critical_class)
    image_shape = (int(result.manifest["height"].median()), int(result.manifest["width"].median()))
    return {**summary, "run_dir": summary["out"], "label_space": label_space.to_dict(), "image_shape": image_shape}


@task(name="choose-run-folder")
def run_folder_step(ingest: dict, config_fingerprint: str, resume: bool, settings_overrides: dict) -> str:
    """The new run folder, or on ``--resume`` the latest unfinished one with the same data and settings."""

    settings = settings_for(settings_overrides)
    fresh = Path(ingest["run_dir"])
    previous = find_resumable(settings.runs_dir, ingest["fingerprint"], config_fingerprint) if resume else None
    if previous is not None and previous != fresh:
        log.info("resuming the unfinished run in %s", previous)
        shutil.rmtree(fresh)
        return str(previous)
    if resume:
        log.info("no unfinished run with this data and these settings: starting a new one")
    write_state(
        fresh,
        kind="train",
        status="ingested",
        fingerprint=ingest["fingerprint"],
        config_fingerprint=config_fingerprint,
        data=ingest["source"],
        label_space=ingest["label_space"],
        created=fresh.name,
    )
    return str(fresh)


@task(name="split", retries=2, retry_delay_seconds=2)
def split_step(run_dir: str, settings_overrides: dict) -> dict:
    """``splits/{train,val,test}.csv`` in the run folder (sticky through the split ledger)."""
    return split_run_folder(Path(run_dir), settings_for(settings_overrides))


@task(name="queue-review-candidates", retries=2, retry_delay_seconds=2)
def queue_review_candidates_step(run_dir: str, run_id: str, model_version: str | None, settings_overrides: dict) -> int:
    """The run's suspected label errors and most confident mistakes among its validation and test images (from
    ``evaluation/probabilities.csv``; at most ``review_label_issues`` and ``review_confident_mistakes``) into
    ``evaluation/review_candidates.csv`` and the review queue, naming the run and ``model_version``; returns how
    many queue entries are new."""
    settings = settings_for(settings_overrides)
    label_issues, mistakes = settings.review_label_issues, settings.review_confident_mistakes
    if label_issues == 0 and mistakes == 0:
        log.info("review candidates: off (review_label_issues and review_confident_mistakes are 0)")
        return 0
    folder = Path(run_dir) / "evaluation"
    rows, proba, names = read_probabilities(folder / PROBABILITIES_FILE)
    critical = LabelSpace.from_dict(read_state(Path(run_dir))["label_space"]).critical_class
    frame = review_candidates(rows, proba, names, critical, label_issues=label_issues, mistakes=mistakes).frame
    frame.assign(reasons=frame["reasons"].map(";".join)).to_csv(folder / CANDIDATES_FILE, index=False)
    queue = open_review_queue(settings.review_queue, settings)
    added = queue.add(frame, run_id, origin="training", model_version=model_version)
    log.info(
        "review candidates of %d evaluated images: %d suspected label errors, %d confident mistakes; %d new in %s",
        len(rows), sum(SUSPECTED_LABEL_ERROR in r for r in frame["reasons"]),
        sum(CONFIDENT_MISTAKE in r for r in frame["reasons"]), added, queue.describe(),
    )  # fmt: skip
    return added
