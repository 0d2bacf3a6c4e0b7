"""Optuna tuning: resumable studies (kill and restart), the total-trials contract, and two workers sharing a study
in a real PostgreSQL 15 cluster (started by infra/postgres.sh)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from steelqc.tasks.config import load_settings
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.split import load_split
from steelqc.tasks.data.synth import generate_dataset
from steelqc.tasks.model.train import resolve_config
from steelqc.tasks.model.tune import make_objective, open_storage
from tests.helpers import STEELQC, TINY_SPACE, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tune") / "data"
    generate_dataset(out, n_images=60, seed=5, mix={0: 0.3, 1: 0.25, 2: 0.15, 3: 0.15, 4: 0.15})
    return out


@pytest.fixture(autouse=True)
def tuning_env(monkeypatch: pytest.MonkeyPatch, prefect_env: dict) -> None:
    monkeypatch.setenv("STEELQC_TUNE_SPACE", json.dumps(TINY_SPACE))
    monkeypatch.setenv("STEELQC_TUNE_EPOCHS", "1")
    monkeypatch.setenv("STEELQC_BOOTSTRAP_SAMPLES", "100")
    monkeypatch.setenv("STEELQC_OPTUNA_HEARTBEAT_S", "1")
    monkeypatch.setenv("STEELQC_OPTUNA_GRACE_S", "3")


def tune(data: Path, home: Path, trials: int, *extra: str) -> dict:
    code, summary, stderr = run(
        "tune", "--data", str(data), "--trials", str(trials), "--profile", "tiny", *extra, "--json", home=home
    )
    assert code == 0, stderr[-3000:]
    return summary


def test_tune_json_contract_and_total_trials(tiny_data: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = tune(tiny_data, home, 2)
    for key in ("study_name", "storage", "n_trials", "best_value", "best_params"):
        assert key in first
    assert first["finished_trials"] == 2 and first["ran_here"] == 2
    assert set(first["best_params"]) == set(TINY_SPACE)
    assert first["storage"].startswith("sqlite:///") and str(home) in first["storage"]
    again = tune(tiny_data, home, 3)
    assert again["study_name"] == first["study_name"]
    assert again["ran_here"] == 1 and again["finished_trials"] == 3
    assert tune(tiny_data, home, 3)["ran_here"] == 0


def test_killed_study_resumes_and_leaves_no_trial_running(tiny_data: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "STEELQC_HOME": str(home)}
    proc = subprocess.Popen(
        [*STEELQC, "tune", "--data", str(tiny_data), "--trials", "4", "--profile", "tiny", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    storage_url = f"sqlite:///{(home / 'optuna.db').resolve()}"

    def trial_states() -> list[optuna.trial.TrialState]:
        try:
            names = optuna.get_all_study_names(storage_url)
            study = optuna.load_study(study_name=names[0], storage=storage_url)
            return [t.state for t in study.trials]
        except Exception:  # no database or schema yet
            return []

    def finished_and_one_running() -> bool:
        states = trial_states()
        return any(s.is_finished() for s in states) and optuna.trial.TrialState.RUNNING in states

    deadline = time.monotonic() + 240
    while not finished_and_one_running():  # kill mid-trial, so a RUNNING trial is left behind
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    orphaned = trial_states().count(optuna.trial.TrialState.RUNNING)  # 1 unless the trial ended in the kill's instant
    time.sleep(4)  # past the heartbeat grace period: the killed trial is stale
    summary = tune(tiny_data, home, 4)
    study = optuna.load_study(study_name=summary["study_name"], storage=open_storage(storage_url, 1, 3))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states) == 4
    assert summary["finished_trials"] == 4 and summary["ran_here"] <= 4
    # the killed trial was failed by the heartbeat check (and retried), not counted as finished
    assert summary["failed_trials"] == states.count(optuna.trial.TrialState.FAIL) == orphaned


def test_two_workers_share_one_study_in_postgresql(tiny_data: Path, tmp_path: Path, postgres: str, monkeypatch) -> None:
    monkeypatch.setenv("STEELQC_OPTUNA_STORAGE", postgres)
    summary = tune(tiny_data, tmp_path / "home", 4, "--workers", "2")
    assert summary["storage"].startswith("postgresql://") and summary["workers"] == 2
    study = optuna.load_study(study_name=summary["study_name"], storage=open_storage(postgres, 1, 3))
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(len(numbers)))  # no duplicate, no gap
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len([t for t in finished if t.state != optuna.trial.TrialState.FAIL]) >= 4
    assert summary["ran_here"] == len(study.trials)  # every trial came from one of our two workers, counted once
    assert len(summary["ran_per_worker"]) == 2 and min(summary["ran_per_worker"]) >= 1  # both took part


def test_train_with_tuning_nests_trials_and_uses_the_best_parameters(tiny_data: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, summary, stderr = run(
        "train", "--data", str(tiny_data), "--profile", "tiny", "--tune-trials", "2", "--json", home=home
    )
    assert code == 0, stderr[-3000:]
    tuning = summary["tuning"]
    assert tuning["finished_trials"] == 2 and set(tuning["best_params"]) == set(TINY_SPACE)
    assert tuning["parent_run_id"] == summary["run_id"]
    client = MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}")
    parent = client.get_run(summary["run_id"])
    assert json.loads(parent.data.params["tuned_params"]) == tuning["best_params"]
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'"
    )
    assert len(children) == 2 and all("objective" in c.data.metrics for c in children)
    assert {c.data.tags["steelqc.trial_state"] for c in children} == {"complete"}
    assert {"metrics", "model_version", "gates"} <= set(summary)


def test_a_pruned_trial_is_recorded_before_it_stops(tiny_data: Path, tmp_path: Path) -> None:
    """Pruned trials reach the trial logger (a nested MLflow run each), with the epoch they stopped at."""
    run_dir = tmp_path / "run"
    code, _, stderr = run("ingest", str(tiny_data), "--out", str(run_dir), "--json")
    assert code == 0, stderr
    code, _, stderr = run("split", str(run_dir), "--no-ledger", "--json")
    assert code == 0, stderr
    frames = {name: load_split(run_dir, name) for name in ("train", "val")}
    ingest = json.loads((run_dir / "ingest.json").read_text())
    label_space = LabelSpace.from_dict({"class_names": ingest["classes"], "critical_class": ingest["critical_class"]})
    cfg = resolve_config(load_settings(), {"epochs": 2}, "tiny", (256, 1600)).to_dict()
    recorded: list[tuple[int, dict]] = []
    objective = make_objective(
        frames["train"], frames["val"], label_space, cfg, TINY_SPACE, tmp_path / "trials", 0.95, 0.5,
        on_trial=lambda trial, params, figures: recorded.append((trial.number, figures)),
    )  # fmt: skip
    # a pruner that stops every trial at its first report (macro-F1 is never above 2)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert len(recorded) == 1 and recorded[0][1]["state"] == "pruned" and recorded[0][1]["pruned_at_epoch"] == 1
