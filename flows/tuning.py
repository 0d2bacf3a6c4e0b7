"""Tuning wiring: `steelqc tune` and the tuning stage of `training-pipeline` (`steelqc train --tune-trials N`).

The study is created here, once, before any worker starts; ``--workers K`` starts K processes on this machine that
load the same study (torch threads split between them). Each trial is logged as a nested MLflow run under the
tuning run. The work itself is ``tasks/tune.py``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from prefect import flow, task

from steelqc.flows.steps import ingest_step, run_folder_step, split_step
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import load_settings
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.train import resolve_config

log = logging.getLogger("flows.tuning")


def _trial_logger(tracking_uri: str, experiment_id: str, parent_run_id: str):
    """A callback that records each trial as a nested MLflow run of the tuning run."""
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


def _worker(job: dict) -> int:
    """One tuning worker process: load the study and run trials until the shared total is reached."""
    import torch

    from steelqc.tasks.model.tune import load_study, make_objective, open_storage, optimise

    torch.set_num_threads(job["threads"])
    os.environ["STEELQC_HOME"] = job["home"]
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker{job['index']} %(levelname)s %(message)s")
    train_df = pd.read_csv(job["train_csv"], dtype={"image_id": str, "classes": str})
    val_df = pd.read_csv(job["val_csv"], dtype={"image_id": str, "classes": str})
    storage = open_storage(job["storage"], job["heartbeat_s"], job["grace_s"])
    study = load_study(job["study_name"], storage, job["seed"] + job["index"])
    objective = make_objective(
        train_df,
        val_df,
        LabelSpace.from_dict(job["label_space"]),
        job["base_config"],
        job["space"],
        Path(job["out_dir"]),
        job["target_recall"],
        job["min_precision"],
        on_trial=_trial_logger(job["tracking_uri"], job["experiment_id"], job["parent_run_id"]),
    )
    return optimise(study, objective, job["trials"])


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
    """Create the study once, run ``workers`` processes until ``trials`` finished trials, return the best."""
    from optuna.trial import TrialState

    from steelqc.tasks.config import mask_url
    from steelqc.tasks.model.tune import (
        DEFAULT_SPACE,
        best_summary,
        create_study,
        finished_trials,
        open_storage,
        storage_url,
        study_name,
    )

    settings = load_settings(**(settings_overrides or {}))
    experiment_id = configure(settings)
    mlflow_client = client(settings)
    space = settings.tune_space or DEFAULT_SPACE
    fixed = {k: v for k, v in base_config.items() if k not in space and k not in ("epochs", "patience", "num_workers")}
    name = study_name(fingerprint, space, json.dumps(fixed, sort_keys=True, default=str))
    url = storage_url(settings.optuna_storage, settings.home)
    storage = open_storage(url, settings.optuna_heartbeat_s, settings.optuna_grace_s)
    study = create_study(name, storage, settings.seed)
    parent = parent_run_id or mlflow_client.create_run(experiment_id, run_name=f"tune-{name}").info.run_id
    mlflow_client.set_tag(parent, "steelqc.study", name)
    splits = Path(run_dir) / "splits"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = [
        {
            "index": i,
            "threads": max(1, cores // workers),
            "home": str(settings.home),
            "storage": url,
            "study_name": name,
            "seed": settings.seed,
            "trials": trials,
            "space": space,
            "base_config": base_config,
            "train_csv": str(splits / "train.csv"),
            "val_csv": str(splits / "val.csv"),
            "label_space": label_space,
            "out_dir": str(Path(run_dir) / "tuning"),
            "target_recall": settings.critical_recall_target,
            "min_precision": settings.gates.critical_precision_min,
            "tracking_uri": settings.mlflow_uri,
            "experiment_id": experiment_id,
            "parent_run_id": parent,
            "heartbeat_s": settings.optuna_heartbeat_s,
            "grace_s": settings.optuna_grace_s,
        }
        for i in range(workers)
    ]
    if workers == 1:
        ran = [_worker(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            ran = pool.map(_worker, jobs)
    study = create_study(name, storage, settings.seed)
    best = best_summary(study)
    summary = {
        "study_name": name,
        "storage": mask_url(url),
        "n_trials": len(study.trials),
        "finished_trials": finished_trials(study),
        "failed_trials": sum(t.state == TrialState.FAIL for t in study.trials),
        "ran_here": sum(ran),
        "ran_per_worker": ran,
        "workers": workers,
        "parent_run_id": parent,
        **{k: v for k, v in best.items() if k != "best_user_attrs"},
    }
    if best["best_value"] is not None:
        mlflow_client.log_metric(parent, "tune_best_value", float(best["best_value"]))
        for key, value in best["best_params"].items():
            mlflow_client.log_param(parent, f"tune.best.{key}", value)
    return summary


def tuning_flow_fn(
    data: str,
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
    settings = load_settings(**overrides)
    ingest = ingest_step(data, fmt, critical_class, overrides)
    cfg = resolve_config(
        settings, {"model": model, "epochs": settings.tune_epochs}, profile, tuple(ingest["image_shape"])
    )
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
