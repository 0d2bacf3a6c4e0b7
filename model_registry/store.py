"""MLflow set-up: tracking URI, the experiment and a client, from the settings; the bounds of MLflow's HTTP retries
(settings ``mlflow_http_*``, README "Faults and retries")."""

from __future__ import annotations

import logging
import os

import mlflow
from mlflow import MlflowClient

from steelqc.tasks.config import Settings
from steelqc.tasks.faults import MlflowRetries

log = logging.getLogger(__name__)


def http_retries(settings: Settings) -> MlflowRetries:
    """The retry bounds of one MLflow HTTP call under ``settings``."""
    return MlflowRetries(settings.mlflow_http_retries, settings.mlflow_http_backoff_s, settings.mlflow_http_timeout_s)


def bound_http_retries(settings: Settings) -> MlflowRetries:
    """Set MLflow's HTTP retry variables from the settings (MLflow reads them at each call; its own defaults, 7
    retries with back-off factor 2 and a 120 s timeout, keep one call to a stopped server going for about 4 min)."""
    retries = http_retries(settings)
    os.environ.update(retries.environ())
    return retries


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store with bounded HTTP retries, create the experiment if needed; returns its
    id.

    With the embedded default (SQLite under ``STEELQC_HOME``) artifacts go to ``STEELQC_HOME/mlartifacts``.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    bound_http_retries(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    uri = settings.mlflow_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        # a database store keeps artifacts under STEELQC_HOME; a tracking server decides for itself
        location = None if uri.startswith(("http:", "https:", "databricks")) else settings.artifact_root.as_uri()
        experiment_id = client.create_experiment(settings.experiment, artifact_location=location)
        log.info("created MLflow experiment %s (%s) in %s", settings.experiment, experiment_id, uri)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def client(settings: Settings) -> MlflowClient:
    """A client bound to the configured tracking and registry store (with bounded HTTP retries)."""
    bound_http_retries(settings)
    return MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
