"""Tuning wiring: `steelqc tune` and the tuning stage of `training-pipeline` (`steelqc train --tune-trials N`).

The study and its worker processes are :func:`steelqc.tasks.model.tune.run_study`; this adds the MLflow side: the
tuning run (the training run when tuning inside `training-pipeline`), each trial as a nested run under it, and the
best value and parameters.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import flow, task

from steelqc.flows.steps import ingest_step, run_folder_step, settings_for, split_step
from steelqc.model_registry.store import client, configure
from steelqc.tasks.model.train import resolve_config
from steelqc.tasks.model.tune import StudyPlan, TrialLogger, run_study

log = logging.getLogger("flows.tuning")


def trial_logger(tracking_uri: str, experiment_id: str, parent_run_id: str) -> TrialLogger:
    """A callback that records each trial as a nested MLflow run of the tuning run (built in each worker)."""
    mlflow_client = MlflowClient(tracking_uri)

    def on_trial(trial: Any, params: dict, figures: dict) -> None:
        run = mlflow_client.create_run(
            experiment_id,
            run_name=f"trial-{trial.number}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "steelqc.trial": str(trial.number),
                "steelqc.trial_state": str(figures.get("state", "complete")),
            },
        )
        for key, value in params.items():
            mlflow_client.log_param(run.info.run_id, key, value)
        names = {"value": "objective", "val_macro_f1": "val_macro_f1", "pruned_at_epoch": "pruned_at_epoch"}
        for key in ("value", "macro_f1", "critical_recall", "critical_precision", "accuracy", *names):
            if isinstance(figures.get(key), int | float) and not isinstance(figures.get(key), bool):
                mlflow_client.log_metric(run.info.run_id, names.get(key, f"val_{key}"), figures[key])
        mlflow_client.set_terminated(run.info.run_id)

    return on_trial


@task(name="tune")
def tune_step(
    run_dir: str,
    fingerprint: str,
    label_space: dict,
    base_config: dict,
    trials: int,
    workers: int,
    parent_run_id: str | None,
    settings_overrides: dict,
) -> dict:
    """Run the study until ``trials`` finished trials (``workers`` processes), trials nested under the tuning run."""
    settings = settings_for(settings_overrides)
    experiment_id = configure(settings)
    mlflow_client = client(settings)
    plan = StudyPlan.for_run(settings, fingerprint, base_config)
    parent = parent_run_id or mlflow_client.create_run(experiment_id, run_name=f"tune-{plan.name}").info.run_id
    mlflow_client.set_tag(parent, "steelqc.study", plan.name)
    logger = partial(trial_logger, settings.mlflow_uri, experiment_id, parent)
    result = run_study(plan, Path(run_dir), label_space, base_config, trials, workers, logger)
    if result.best_value is not None:
        mlflow_client.log_metric(parent, "tune_best_value", float(result.best_value))
        for key, value in (result.best_params or {}).items():
            mlflow_client.log_param(parent, f"tune.best.{key}", value)
    return {**result.to_dict(), "parent_run_id": parent}


def tuning_flow_fn(
    data: str | list[str],
    trials: int,
    workers: int = 1,
    fmt: str = "auto",
    critical_class: str | None = None,
    profile: str = "default",
    model: str | None = None,
    settings_overrides: dict | None = None,
) -> dict:
    """Ingest, split and tune (no final training): the body of the `tuning` flow."""
    overrides = settings_overrides or {}
    settings = settings_for(overrides)
    ingest = ingest_step(data, fmt, critical_class, overrides)
    requested = {"model": model, "epochs": settings.tune_epochs, "image_channels": ingest["channels"]}
    cfg = resolve_config(settings, requested, profile, tuple(ingest["image_shape"]))
    run_dir = run_folder_step(ingest, cfg.fingerprint(), False, overrides)
    split_step(run_dir, overrides)
    summary = tune_step(
        run_dir, ingest["fingerprint"], ingest["label_space"], cfg.to_dict(), trials, workers, None, overrides
    )
    return {**summary, "run_dir": run_dir, "fingerprint": ingest["fingerprint"]}


# The `tuning` Prefect flow (also the entrypoint of the work-pool deployment in infra/prefect.yaml).
tuning = flow(name="tuning")(tuning_flow_fn)


def tuning_flow():
    """The `tuning` Prefect flow."""
    return tuning
