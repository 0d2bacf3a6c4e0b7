"""Hyperparameter tuning with Optuna: one study per (data fingerprint, search space), shareable by many workers.

* **Objective**: validation macro-F1 *after* the critical threshold is calibrated on the validation split. A trial
  whose calibrated critical precision falls below the gate cannot win: its value is pushed below every valid
  trial's (``value - 1``), and the reason is kept as a user attribute.
* **Pruning**: a MedianPruner fed by each epoch's validation macro-F1.
* **Total, not increment**: ``--trials N`` is the study's total of finished (complete or pruned) trials, so a
  resumed study runs only what is missing; workers share the total through ``MaxTrialsCallback``.
* **Storage**: SQLite under ``STEELQC_HOME`` by default; ``journal:PATH`` for several local workers (Optuna's
  journal file tolerates concurrent writers); ``postgresql://...`` for a cluster. RDB storages get a heartbeat, so
  a trial whose worker was killed is marked failed after the grace period and retried once, never left RUNNING.
* The study is created once, before workers start (Optuna's creation race); workers only load it:
  :func:`run_study` creates it, then runs ``workers`` processes on this machine (torch threads split between them)
  until the study holds the total, and returns a :class:`TuneResult`. Each trial can be reported to a logger (the
  flows record them as nested MLflow runs) built in each worker by a picklable factory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from steelqc.tasks.config import OPTUNA_GRACE_S, OPTUNA_HEARTBEAT_S, Settings, mask_url
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.split import load_split
from steelqc.tasks.evaluation.assess import calibrate, true_indices
from steelqc.tasks.evaluation.metrics import compute_metrics
from steelqc.tasks.model.inference import load_model, predict_proba
from steelqc.tasks.model.train import TrainConfig, train_model

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
NOT_FIXED = ("epochs", "patience", "num_workers")  # training settings that do not make another study

TrialLogger = Callable[[optuna.Trial, dict[str, Any], dict[str, Any]], None]

# The search space of README "Hyperparameter tuning"; every entry can be overridden from settings.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "freeze_stages": {"type": "int", "low": 0, "high": 4},
    "scheduler": {"type": "categorical", "choices": ["none", "cosine"]},
    "model": {"type": "categorical", "choices": ["mobilenet_v2", "simple_cnn"]},
}


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one point of ``space`` for ``trial``."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif kind == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"])
        elif kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
        else:
            raise ValueError(f"search space entry {name!r}: unknown type {kind!r}")
    return params


def space_hash(space: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:8]


def study_name(fingerprint: str, space: dict[str, dict[str, Any]], extra: str = "") -> str:
    """Derived from the data fingerprint and the search space (and fixed training settings in ``extra``)."""
    tail = hashlib.sha256(extra.encode()).hexdigest()[:6] if extra else "base"
    return f"steelqc-{fingerprint[:12]}-{space_hash(space)}-{tail}"


def storage_url(configured: str | None, home: Path) -> str:
    """The storage URL: the setting, else SQLite under ``home``."""
    return configured or f"sqlite:///{(home / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat_s: int = OPTUNA_HEARTBEAT_S, grace_s: int = OPTUNA_GRACE_S) -> BaseStorage:
    """An Optuna storage for ``url`` (``sqlite:``, ``postgresql:``, ``journal:PATH``)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return RDBStorage(
        url,
        heartbeat_interval=heartbeat_s,
        grace_period=grace_s,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
    )


def create_study(name: str, storage: BaseStorage | str, seed: int) -> optuna.Study:
    """Create the study if needed (call once, before any worker); returns it loaded."""
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        load_if_exists=True,
    )


def load_study(name: str, storage: BaseStorage | str, seed: int) -> optuna.Study:
    """Load an existing study (workers never create one)."""
    return optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def missing_trials(study: optuna.Study, total: int) -> int:
    """How many trials remain until ``total`` finished ones."""
    return max(0, total - finished_trials(study))


def make_objective(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    label_space: LabelSpace,
    base_config: dict[str, Any],
    space: dict[str, dict[str, Any]],
    out_dir: Path,
    target_recall: float,
    min_precision: float,
    on_trial: Callable[[optuna.Trial, dict[str, Any], dict[str, Any]], None] | None = None,
) -> Callable[[optuna.Trial], float]:
    """The objective: train with the trial's parameters, calibrate on validation, score macro-F1."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        # a trial is one process: tuning scales out by workers (trials in parallel), not by DDP inside a trial
        cfg = TrainConfig.from_dict({**base_config, **params, "processes": 1})
        trial_dir = out_dir / f"trial-{trial.number:04d}"

        def report(epoch: int, figures: dict) -> None:
            trial.report(float(figures["val_macro_f1"]), epoch)
            if trial.should_prune():
                if on_trial is not None:  # pruned trials are recorded too
                    on_trial(trial, params, {"state": "pruned", "pruned_at_epoch": epoch, **figures})
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: val macro-F1 {figures['val_macro_f1']:.4f}")

        result = train_model(train_df, val_df, label_space, cfg, trial_dir, on_epoch=report, progress=False)
        model, meta = load_model(result.best_checkpoint)
        spec = meta["input_spec"]
        calibration = calibrate(model, val_df, label_space, cfg.input_spec, target_recall)
        proba = predict_proba(model, val_df, label_space, spec)
        figures = compute_metrics(
            true_indices(val_df, label_space),
            proba,
            label_space.names,
            label_space.critical_index,
            calibration["threshold"],
        )
        value = float(figures["macro_f1"] or 0.0)
        precision = figures["critical_precision"]
        trial.set_user_attr("val_macro_f1", value)
        trial.set_user_attr("critical_precision", precision)
        trial.set_user_attr("threshold", calibration["threshold"])
        trial.set_user_attr("checkpoint", str(result.best_checkpoint))
        if precision is None or precision < min_precision:
            trial.set_user_attr("excluded", f"calibrated critical precision {precision} < gate {min_precision}")
            value -= 1.0
        if on_trial is not None:
            on_trial(trial, params, {"state": "complete", "value": value, **figures})
        return value

    return objective


def optimise(study: optuna.Study, objective: Callable[[optuna.Trial], float], total: int) -> int:
    """Run trials until the study holds ``total`` finished ones (shared by every worker).

    Returns how many trials this worker ran (other workers' trials are not counted).
    """
    if missing_trials(study, total) == 0:
        log.info("study %s already has %d finished trials", study.study_name, finished_trials(study))
        return 0
    ran: list[int] = []
    study.optimize(
        objective,
        callbacks=[optuna.study.MaxTrialsCallback(total, states=FINISHED), lambda _s, trial: ran.append(trial.number)],
        catch=(RuntimeError, ValueError),
        gc_after_trial=True,
    )
    return len(ran)


def best_summary(study: optuna.Study) -> dict[str, Any]:
    """Best value and parameters (None before any trial completed)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {"best_value": None, "best_params": None, "best_trial": None}
    best = max(complete, key=lambda t: t.value)
    return {
        "best_value": best.value,
        "best_params": best.params,
        "best_trial": best.number,
        "best_user_attrs": best.user_attrs,
    }


# ------------------------------------------------------------------------------------------ the whole study


@dataclass(frozen=True)
class StudyPlan:
    """Which study (named from the data fingerprint, the search space and the fixed training settings), where it
    is stored, and what its trials are judged by. Sent to every worker process."""

    name: str
    storage: str
    space: dict[str, dict[str, Any]]
    seed: int
    heartbeat_s: int
    grace_s: int
    target_recall: float
    min_precision: float
    home: str

    @classmethod
    def for_run(cls, settings: Settings, fingerprint: str, base_config: dict[str, Any]) -> StudyPlan:
        space = settings.tune_space or DEFAULT_SPACE
        fixed = {k: v for k, v in base_config.items() if k not in space and k not in NOT_FIXED}
        return cls(
            name=study_name(fingerprint, space, json.dumps(fixed, sort_keys=True, default=str)),
            storage=storage_url(settings.optuna_storage, settings.home),
            space=space,
            seed=settings.seed,
            heartbeat_s=settings.optuna_heartbeat_s,
            grace_s=settings.optuna_grace_s,
            target_recall=settings.critical_recall_target,
            min_precision=settings.gates.critical_precision_min,
            home=str(settings.home),
        )

    def open(self) -> BaseStorage:
        return open_storage(self.storage, self.heartbeat_s, self.grace_s)


@dataclass(frozen=True)
class TuneResult:
    """A study after this run's workers stopped (``storage`` masked; ``best_*`` None before any trial completed)."""

    study_name: str
    storage: str
    n_trials: int
    finished_trials: int
    failed_trials: int
    ran_here: int
    ran_per_worker: list[int]
    workers: int
    best_value: float | None
    best_params: dict[str, Any] | None
    best_trial: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    """What one worker process needs (picklable)."""

    plan: StudyPlan
    index: int
    threads: int
    trials: int
    run_dir: str
    label_space: dict[str, Any]
    base_config: dict[str, Any]
    trial_logger: Callable[[], TrialLogger] | None


def _worker(job: _Job) -> int:
    """One tuning worker: load the study and run trials until the shared total is reached; trials it ran."""
    torch.set_num_threads(job.threads)
    os.environ["STEELQC_HOME"] = job.plan.home
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker{job.index} %(levelname)s %(message)s")
    study = load_study(job.plan.name, job.plan.open(), job.plan.seed + job.index)
    objective = make_objective(
        load_split(job.run_dir, "train"),
        load_split(job.run_dir, "val"),
        LabelSpace.from_dict(job.label_space),
        job.base_config,
        job.plan.space,
        Path(job.run_dir) / "tuning",
        job.plan.target_recall,
        job.plan.min_precision,
        on_trial=job.trial_logger() if job.trial_logger is not None else None,
    )
    return optimise(study, objective, job.trials)


def run_study(
    plan: StudyPlan,
    run_dir: Path | str,
    label_space: dict[str, Any],
    base_config: dict[str, Any],
    trials: int,
    workers: int = 1,
    trial_logger: Callable[[], TrialLogger] | None = None,
) -> TuneResult:
    """Create the study once, run ``workers`` processes on the run's train/validation splits until it holds
    ``trials`` finished trials, and sum it up. ``trial_logger``: a picklable factory each worker calls for the
    callback its trials report to."""
    storage = plan.open()
    create_study(plan.name, storage, plan.seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = [
        _Job(plan, i, max(1, cores // workers), trials, str(run_dir), label_space, base_config, trial_logger)
        for i in range(workers)
    ]
    if workers == 1:
        ran = [_worker(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            ran = pool.map(_worker, jobs)
    study = create_study(plan.name, storage, plan.seed)
    best = best_summary(study)
    return TuneResult(
        study_name=plan.name,
        storage=mask_url(plan.storage),
        n_trials=len(study.trials),
        finished_trials=finished_trials(study),
        failed_trials=sum(t.state == TrialState.FAIL for t in study.trials),
        ran_here=sum(ran),
        ran_per_worker=ran,
        workers=workers,
        best_value=best["best_value"],
        best_params=best["best_params"],
        best_trial=best["best_trial"],
    )
