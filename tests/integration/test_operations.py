"""Operations against real local servers: `steelqc server`, manual approval of a paused run, alerts, `steelqc serve`.

Pipelines run on the tiny profile with relaxed gate thresholds (tests/helpers.py, RELAXED) so that the gates pass and
the approval path is reached; one run keeps the product's thresholds to exercise the gates-failed alert.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import optuna
import psycopg
import pytest
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from steelqc.tasks.data.synth import generate_dataset
from steelqc.tasks.model.tune import open_storage
from tests.helpers import RELAXED, ROOT, STEELQC, TINY_SPACE, free_port, run

pytestmark = pytest.mark.slow

FLOW_RUN = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ops") / "data"
    generate_dataset(out, n_images=80, seed=11, mix={0: 0.3, 1: 0.25, 2: 0.15, 3: 0.15, 4: 0.15})
    return out


@pytest.fixture
def ops_env(monkeypatch: pytest.MonkeyPatch, prefect_env: dict, webhook) -> dict:
    for key, value in RELAXED.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STEELQC_APPROVAL_POLL_S", "0.5")
    monkeypatch.setenv("STEELQC_ACTOR", "night-shift")  # the identity that starts the runs
    monkeypatch.setenv("STEELQC_ALERT_WEBHOOK_URL", webhook[0])
    return dict(os.environ)


def _start_training(data: Path, home: Path, log: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    env = {**(env or os.environ), "STEELQC_HOME": str(home)}
    return subprocess.Popen(
        [*STEELQC, "train", "--data", str(data), "--profile", "tiny", "--approval", "manual", *extra, "--json"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=env,
    )


def _wait_paused(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    """The flow run id once the run is paused for approval (from its alert), checked against the server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training exited early:\n{log.read_text()[-3000:]}"
        match = FLOW_RUN.search(log.read_text()) if "awaiting-approval" in log.read_text() else None
        if match:
            with get_client(sync_client=True) as client:
                if client.read_flow_run(match.group(1)).state.is_paused():
                    return match.group(1)
        time.sleep(0.5)
    raise AssertionError(f"the run never paused for approval:\n{log.read_text()[-3000:]}")


def _finish(proc: subprocess.Popen, log: Path) -> dict:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_manual_approval_pauses_then_approve_and_reject_from_the_cli(
    tiny_data: Path, tmp_path: Path, ops_env: dict, webhook
) -> None:
    home = tmp_path / "home"
    _, received = webhook

    # 1. gates pass -> challenger, paused; the starter cannot approve; another reviewer can
    log1 = tmp_path / "run1.log"
    proc = _start_training(tiny_data, home, log1)
    flow_run_id = _wait_paused(proc, log1)
    code, refused, stderr = run("registry", "approve", flow_run_id, "--reviewer", "night-shift", "--json", home=home)
    assert code == 1, stderr
    assert refused["applied"] is False and refused["event"]["action"] == "approve-refused"
    assert "self-approval" in refused["event"]["reason"] and "champion" not in refused["aliases"]
    _wait_paused(proc, log1)  # paused again, waiting for someone else
    code, approved, stderr = run(
        "registry", "approve", flow_run_id, "--reviewer", "ml-lead", "--comment", "checked the CAMs", "--json",
        home=home,
    )  # fmt: skip
    assert code == 0, stderr
    summary = _finish(proc, log1)
    assert summary["promoted"] is True and summary["approval"]["reviewer"] == "ml-lead"
    version = summary["model_version"]
    assert summary["aliases"] == {"challenger": version, "champion": version}
    event = approved["event"]
    assert (event["action"], event["actor"], event["to_version"]) == ("approve", "ml-lead", version)
    assert event["comment"] == "checked the CAMs" and event["flow_run_id"] == flow_run_id
    assert event["started_by"] == "night-shift"

    # the awaiting-approval alert went out with a link to the paused run
    alerts = [a for a in received if "awaits" in a.get("title", "")]
    assert alerts and f"/runs/flow-run/{flow_run_id}" in alerts[0]["text"]

    # 2. a second run, rejected: the champion stays
    log2 = tmp_path / "run2.log"
    proc = _start_training(tiny_data, home, log2, "--epochs", "2")
    second = _wait_paused(proc, log2)
    code, rejected, stderr = run(
        "registry", "approve", second, "--reviewer", "ml-lead", "--reject", "--comment", "recall too close", "--json",
        home=home,
    )  # fmt: skip
    assert code == 0, stderr
    summary = _finish(proc, log2)
    assert summary["promoted"] is False and summary["aliases"]["champion"] == version
    assert rejected["event"]["action"] == "reject" and rejected["event"]["actor"] == "ml-lead"
    _, history, _ = run("registry", "history", "--json", home=home)
    actions = [(e["action"], e.get("actor")) for e in history["events"]]
    assert ("approve-refused", "night-shift") in actions
    assert ("approve", "ml-lead") in actions and ("reject", "ml-lead") in actions
    assert history["aliases"]["champion"] == version


def test_approval_timeout_leaves_the_champion_and_says_why(
    tiny_data: Path, tmp_path: Path, ops_env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEELQC_APPROVAL_TIMEOUT_S", "3")
    home = tmp_path / "home"
    log = tmp_path / "run.log"
    proc = _start_training(tiny_data, home, log, env=dict(os.environ))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log.read_text()[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["promoted"] is False and summary["approval"] == {"decision": "timeout"}
    assert "champion" not in summary["aliases"] and summary["aliases"]["challenger"] == summary["model_version"]
    _, history, _ = run("registry", "history", "--json", home=home)
    assert history["events"][-1]["action"] == "approval-timeout"
    assert "no decision within 3 s" in history["events"][-1]["reason"]


def test_manual_approval_without_a_prefect_server_is_a_clear_error(tiny_data: Path, monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    code, summary, _ = run("train", "--data", str(tiny_data), "--profile", "tiny", "--approval", "manual", "--json")
    assert code == 2 and "steelqc server start" in summary["error"]


def test_gates_failed_and_run_failed_raise_alerts_with_links(
    tiny_data: Path, tmp_path: Path, ops_env: dict, monkeypatch: pytest.MonkeyPatch, webhook
) -> None:
    _, received = webhook
    for key in RELAXED:  # the product's thresholds: the tiny model fails them
        monkeypatch.delenv(key)
    code, summary, stderr = run("train", "--data", str(tiny_data), "--profile", "tiny", "--json")
    assert code == 0, stderr[-3000:]
    assert summary["promoted"] is False and summary["alert"]["kind"] == "gates-failed"
    assert summary["alert"]["event"] is True  # the Prefect event steelqc.alert.gates-failed was emitted
    gate_alerts = [a for a in received if "failed its gates" in a["title"]]
    assert gate_alerts and f"/runs/flow-run/{summary['flow_run_id']}" in gate_alerts[0]["text"]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")  # header only: no image at all
    (broken / "train_images").mkdir()
    code, _, stderr = run("train", "--data", str(broken), "--profile", "tiny", "--json")
    assert code != 0
    failed = [a for a in received if a["title"].startswith("[steelqc] training-pipeline run")]
    assert failed, f"no run-failed alert; received {received}\n{stderr[-2000:]}"
    assert FLOW_RUN.search(failed[-1]["text"])


def _deployment(name: str) -> dict:
    with get_client(sync_client=True) as client:
        d = client.read_deployment_by_name(name)
        return {
            "id": str(d.id),
            "paused": d.paused,
            "schedules": [
                {"id": str(s.id), "cron": s.schedule.cron, "timezone": s.schedule.timezone, "active": s.active}
                for s in d.schedules
            ],
            "parameters": d.parameters,
        }


def _serve(env: dict) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [*STEELQC, "serve", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    line = proc.stdout.readline()
    assert line, "steelqc serve printed nothing"
    # keep reading what it prints after the summary, so a full pipe can never block its shutdown
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, json.loads(line)


def test_serve_registers_the_nightly_schedule_and_it_survives_a_restart(
    ops_env: dict, steelqc_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEELQC_TIMEZONE", "Europe/Berlin")
    env = dict(os.environ)
    proc, summary = _serve(env)
    try:
        by_name = {d["name"]: d for d in summary["deployments"]}
        assert sorted(by_name) == ["drift-monitor/hourly", "training-pipeline/nightly-retrain"]
        nightly, hourly = by_name["training-pipeline/nightly-retrain"], by_name["drift-monitor/hourly"]
        assert [(s["cron"], s["timezone"], s["active"]) for s in nightly["schedules"]] == [
            ("0 2 * * *", "Europe/Berlin", True)
        ]
        assert nightly["parameters"]["approval"] == "manual" and nightly["concurrency_limit"] == 1
        assert [(s["cron"], s["timezone"], s["active"]) for s in hourly["schedules"]] == [
            ("0 * * * *", "Europe/Berlin", True)
        ]
        assert hourly["concurrency_limit"] == 1
        time.sleep(3)
        assert proc.poll() is None, "serve exited"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=180)  # a bound for a loaded machine, not a speed check
    before = _deployment("training-pipeline/nightly-retrain")
    assert [s["active"] for s in before["schedules"]] == [True], "stopping serve paused the schedule"
    assert before["paused"] is False, "stopping serve paused the deployment"
    hourly_before = _deployment("drift-monitor/hourly")
    assert [s["active"] for s in hourly_before["schedules"]] == [True] and hourly_before["paused"] is False

    proc, _ = _serve(env)  # a restart re-deploys: same deployment, same single schedule, still active
    try:
        after = _deployment("training-pipeline/nightly-retrain")
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)  # systemd / Kubernetes stop
        proc.wait(timeout=180)
    assert after["id"] == before["id"] and after["schedules"] == before["schedules"]
    assert _deployment("drift-monitor/hourly")["schedules"] == hourly_before["schedules"]
    final = _deployment("training-pipeline/nightly-retrain")
    assert final["paused"] is False and final["schedules"][0]["active"] is True


def _server_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(
        STEELQC_HOME=str(home), STEELQC_PREFECT_PORT=str(free_port()), STEELQC_MLFLOW_PORT=str(free_port())
    )  # fmt: skip
    return env


def _cli(env: dict, *args: str) -> tuple[int, dict]:
    proc = subprocess.run([*STEELQC, *args, "--json"], capture_output=True, text=True, env=env, timeout=240)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_server_start_status_stop(tmp_path: Path) -> None:
    env = _server_env(tmp_path / "home")
    code, started = _cli(env, "server", "start")
    try:
        assert code == 0, started
        for name in ("prefect", "mlflow"):
            s = started["servers"][name]
            assert s["healthy"] and s["started"] and Path(s["pid_file"]).is_file() and Path(s["log"]).is_file()
        assert started["servers"]["mlflow"]["storage"].startswith("sqlite:///")
        code, again = _cli(env, "server", "start")  # idempotent: nothing new started
        assert code == 0 and not any(s["started"] for s in again["servers"].values())
        code, status = _cli(env, "server", "status")
        assert code == 0 and all(s["healthy"] for s in status["servers"].values())
        # the CLI finds the running Prefect server by itself (pid file + health check)
        code, registered = _cli(env, "serve", "--register-only")
        assert code == 0 and registered["prefect_api"].endswith(f":{env['STEELQC_PREFECT_PORT']}/api")
    finally:
        code, stopped = _cli(env, "server", "stop")
    assert code == 0 and all(s["stopped"] for s in stopped["servers"].values())
    code, status = _cli(env, "server", "status")
    assert code == 1 and not any(s["running"] or s["healthy"] for s in status["servers"].values())


def test_servers_on_postgresql_one_database_each(tmp_path: Path) -> None:
    if (
        not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        and subprocess.run(["which", "pg_ctl"], capture_output=True).returncode
    ):
        pytest.skip("PostgreSQL is not installed")
    cluster = Path(tempfile.mkdtemp(prefix="steelqc-pg-"))
    script = ROOT / "infra" / "postgres.sh"
    url = subprocess.run([str(script), "start", str(cluster)], check=True, capture_output=True, text=True).stdout
    env = {**_server_env(tmp_path / "home"), "STEELQC_DATABASE_URL": url.strip()}
    try:
        code, started = _cli(env, "server", "start")
        assert code == 0, started
        assert started["servers"]["prefect"]["storage"].endswith("/steelqc_prefect")
        assert started["servers"]["prefect"]["storage"].startswith("postgresql+asyncpg://")
        assert started["servers"]["mlflow"]["storage"].endswith("/steelqc_mlflow")
        tracking = started["ui"]["mlflow"]
        experiment = mlflow.MlflowClient(tracking).create_experiment("pg-check")
        assert mlflow.MlflowClient(tracking).get_experiment(experiment).name == "pg-check"
        with psycopg.connect(url.strip()) as conn:
            databases = [row[0] for row in conn.execute("SELECT datname FROM pg_database")]
        assert {"steelqc_prefect", "steelqc_mlflow"} <= set(databases)
    finally:
        _cli(env, "server", "stop")
        subprocess.run([str(script), "stop", str(cluster)], capture_output=True)


def test_work_pool_recipe_runs_tuning_workers_on_one_study(tiny_data: Path, tmp_path: Path, prefect_env: dict) -> None:
    """infra/prefect.yaml as its header says: pool, deploy, create the study, two worker runs, one process worker."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    journal = tmp_path / "optuna.journal"
    env = {
        **os.environ,
        **prefect_env,
        "STEELQC_HOME": str(tmp_path / "home"),
        "STEELQC_REPO": str(ROOT),
        "STEELQC_NIGHTLY_DATA": str(tiny_data),
        "STEELQC_OPTUNA_STORAGE": f"journal:{journal}",
        "STEELQC_TUNE_SPACE": json.dumps(TINY_SPACE),
        "STEELQC_TUNE_EPOCHS": "1",
    }

    def sh(*args: str, timeout: float = 300) -> str:
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    sh(prefect, "work-pool", "create", "steelqc", "--type", "process", "--overwrite")
    sh(prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml")
    first = json.loads(sh(*STEELQC, "tune", "--data", str(tiny_data), "--trials", "1", "--profile", "tiny", "--json"))
    for _ in range(2):
        sh(prefect, "deployment", "run", "tuning/worker", "--param", "trials=3", "--param", "profile=tiny")
    sh(prefect, "worker", "start", "--pool", "steelqc", "--run-once", timeout=400)
    with get_client(sync_client=True) as client:
        worker = client.read_deployment_by_name("tuning/worker")
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[worker.id])))
        nightly = client.read_deployment_by_name("training-pipeline/nightly-retrain")
    assert len(runs) == 2 and all(r.state.is_completed() for r in runs)
    assert [(s.schedule.cron, s.active) for s in nightly.schedules] == [("0 2 * * *", True)]
    assert nightly.parameters == {"data": "@nightly", "approval": "manual"}  # resolved when a run starts
    study = optuna.load_study(study_name=first["study_name"], storage=open_storage(f"journal:{journal}"))
    states = [t.state for t in study.trials]
    # both runs worked on the one study: 3 finished in total (a parallel worker may add one more), none left running
    assert optuna.trial.TrialState.RUNNING not in states
    assert 3 <= sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states) <= 4
    assert sorted(t.number for t in study.trials) == list(range(len(states)))
