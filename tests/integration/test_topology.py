"""The topology of infra/docker-compose.yml, without containers (Docker cannot run on the development machines).

One PostgreSQL cluster (infra/postgres.sh) holds the Prefect and MLflow databases; `steelqc server start` runs the
Prefect server (with its API auth string, as in compose) and the MLflow server, whose artifacts go to S3 (moto's
server standing in for MinIO); infra/prefect.yaml is deployed on a process work pool and a `prefect worker` runs one
nightly training run, approved by an ML lead while it waits, and one drift-monitor run on images in the S3 inbox.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import RELAXED, ROOT, STEELQC, free_port
from tests.integration.conftest import TINY_MIX, MotoS3

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

BUCKET = "steelqc"
AUTH = "steelqc:topology-test"  # the Prefect server's API auth string (compose: PREFECT_API_AUTH_STRING)
PREFECT = str(Path(sys.executable).with_name("prefect"))
N_INBOX = 10


def sh(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """Run a command from the repository root (as infra/prefect.yaml's header does); its stdout, or fail."""
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def cli_json(env: dict[str, str], *args: str) -> dict:
    """A steelqc command's one JSON object."""
    return json.loads(sh(env, *STEELQC, *args, "--json").strip().splitlines()[-1])


@pytest.fixture
def servers(tmp_path: Path, postgres: str, moto_s3: MotoS3) -> Iterator[dict[str, str]]:
    """PostgreSQL-backed Prefect (auth on) and MLflow (artifacts in s3://steelqc/mlflow) servers, started by
    `steelqc server start`; yields the clients' environment."""
    moto_s3.client().create_bucket(Bucket=BUCKET)
    ports = {"STEELQC_PREFECT_PORT": str(free_port()), "STEELQC_MLFLOW_PORT": str(free_port())}
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    server_env.update(
        ports, STEELQC_HOME=str(tmp_path / "server-home"), STEELQC_DATABASE_URL=postgres,
        STEELQC_ARTIFACTS_DESTINATION=f"s3://{BUCKET}/mlflow", PREFECT_SERVER_API_AUTH_STRING=AUTH,
    )  # fmt: skip
    started = cli_json(server_env, "server", "start")
    try:
        assert started["servers"]["prefect"]["storage"].startswith("postgresql+asyncpg://")
        assert started["servers"]["mlflow"]["storage"].startswith("postgresql+psycopg://")
        yield {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "STEELQC_"))},
            **RELAXED,
            "STEELQC_S3_ENDPOINT_URL": moto_s3.endpoint_url,
            "PREFECT_API_URL": f"{started['ui']['prefect']}/api",
            "PREFECT_API_AUTH_STRING": AUTH,
            "STEELQC_TRACKING_URI": started["ui"]["mlflow"],
            "STEELQC_OPTUNA_STORAGE": postgres,
        }
    finally:
        sh(server_env, *STEELQC, "server", "stop", "--json")


@pytest.fixture
def prefect_client_env(servers: dict[str, str]) -> Iterator[None]:
    """This process's Prefect clients on the topology's server, with its auth string."""
    updates = {PREFECT_API_URL: servers["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: AUTH}
    with temporary_settings(updates=updates):
        yield


def start_run(deployment: str, parameters: dict | None = None) -> str:
    """A flow run of ``deployment`` (flow/name), as `prefect deployment run` creates it; its id."""
    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        return str(client.create_flow_run_from_deployment(target.id, parameters=parameters or {}).id)


def read_run(flow_run_id: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def start_worker(env: dict[str, str], queue: str, log_path: Path) -> subprocess.Popen:
    """`prefect worker start --pool steelqc --run-once` on one work queue: runs what is due there, then exits."""
    with log_path.open("w") as out:
        return subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "steelqc", "--work-queue", queue, "--run-once"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop_worker(worker: subprocess.Popen) -> None:
    """Kill a worker still running (a failed test) with its flow-run processes (its own process group)."""
    if worker.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def wait_paused(worker: subprocess.Popen, flow_run_id: str, log_path: Path, timeout_s: float = 400) -> None:
    """Until the flow run waits for approval (fails when the worker exits first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_run(flow_run_id).state.is_paused():
            return
        assert worker.poll() is None, f"the worker exited before approval:\n{log_path.read_text()[-4000:]}"
        time.sleep(1)
    raise AssertionError(f"the run never paused for approval:\n{log_path.read_text()[-4000:]}")


def finish(worker: subprocess.Popen, flow_run_id: str, log_path: Path, timeout_s: float = 300) -> None:
    """Wait for the run-once worker; the flow run must have completed."""
    worker.wait(timeout=timeout_s)
    state = read_run(flow_run_id).state
    assert worker.returncode == 0 and state.is_completed(), f"{state}\n{log_path.read_text()[-4000:]}"


def status_without_auth(url: str) -> int:
    """The HTTP status of a GET of ``url`` without credentials (loopback: no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def s3_keys(moto_s3: MotoS3, prefix: str) -> list[str]:
    """Every object key under ``prefix`` in the bucket."""
    pages = moto_s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_compose_topology_trains_with_approval_and_monitors_the_s3_inbox(
    tmp_path: Path, servers: dict[str, str], prefect_client_env: None, moto_s3: MotoS3, postgres: str
) -> None:
    start = time.monotonic()
    nightly = tmp_path / "incoming"
    generate_dataset(nightly, n_images=80, seed=21, mix=TINY_MIX)
    env = {
        **servers,
        "STEELQC_HOME": str(tmp_path / "worker-home"),  # the worker's volume in compose
        "STEELQC_NIGHTLY_DATA": str(nightly),
        "STEELQC_MONITOR_INBOX": f"s3://{BUCKET}/inbox",
        "STEELQC_MONITOR_MIN_IMAGES": str(N_INBOX),
        "STEELQC_APPROVAL_POLL_S": "0.5",
        "STEELQC_REPO": str(ROOT),
        "STEELQC_INBOX": f"s3://{BUCKET}/inbox",
    }
    api = servers["PREFECT_API_URL"]
    assert (status_without_auth(f"{api}/health"), status_without_auth(f"{api}/work_pools/steelqc")) == (200, 401)
    # what the compose file's `deployments` job does, then no schedule fires while the test runs
    sh(env, PREFECT, "work-pool", "create", "steelqc", "--type", "process", "--overwrite")
    sh(env, PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml")
    sh(env, PREFECT, "--no-prompt", "deployment", "schedule", "pause", "--all")

    # 1. the nightly retrain, run by the worker, waits for an ML lead; approved from the CLI it becomes champion
    training = start_run("training-pipeline/nightly-retrain", {"profile": "tiny"})
    worker_log = tmp_path / "worker-training.log"
    worker = start_worker(env, "training", worker_log)
    try:
        wait_paused(worker, training, worker_log)
        approved = cli_json(env, "registry", "approve", training, "--reviewer", "ml-lead", "--comment", "topology")
        finish(worker, training, worker_log)
    finally:
        stop_worker(worker)
    log.info("training run approved and finished after %.0f s", time.monotonic() - start)
    event = approved["event"]
    assert approved["applied"] is True and (event["action"], event["actor"]) == ("approve", "ml-lead")
    assert approved["aliases"]["champion"] == event["to_version"]

    # the registry too: another test's mlflow.set_registry_uri would otherwise answer (a local store)
    mlflow = MlflowClient(servers["STEELQC_TRACKING_URI"], registry_uri=servers["STEELQC_TRACKING_URI"])
    [model] = mlflow.search_registered_models(filter_string="name = 'steel-defect-classifier'")
    champion = mlflow.get_model_version_by_alias(model.name, "champion")
    assert champion.version == event["to_version"] and event["flow_run_id"] == training
    run_keys = s3_keys(moto_s3, "mlflow/")
    run_id = champion.run_id
    assert any(f"/{run_id}/artifacts/" in key for key in run_keys), "the run's artifacts are not in S3"
    model_keys = [key for key in run_keys if "/models/" in key]
    assert any(key.endswith("MLmodel") for key in model_keys), "the registered model's files are not in S3"
    assert not (tmp_path / "server-home" / "mlartifacts").exists()  # nothing landed on the server's disk

    # 2. new images arrive in the S3 inbox; the hourly deployment's run checks them against that champion
    inbox_data = tmp_path / "inbox-data"
    generate_dataset(inbox_data, n_images=N_INBOX, seed=22, mix=TINY_MIX)
    s3 = moto_s3.client()
    for image in sorted((inbox_data / "train_images").glob("*.jpg")):
        s3.upload_file(str(image), BUCKET, f"inbox/line1/{image.name}")
    monitoring = start_run("drift-monitor/hourly")
    assert read_run(monitoring).parameters == {"incoming": f"s3://{BUCKET}/inbox"}  # templated at deploy time
    worker_log = tmp_path / "worker-monitoring.log"
    worker = start_worker(env, "monitoring", worker_log)
    try:
        finish(worker, monitoring, worker_log)
    finally:
        stop_worker(worker)
    log.info("monitoring run finished after %.0f s", time.monotonic() - start)
    [decision] = cli_json(env, "monitor", "--history")["history"]  # read back from the MLflow server
    assert decision["status"] == "FINISHED" and decision["decision"], decision
    assert (decision["model_version"], decision["n_images"]) == (champion.version, N_INBOX)
    assert decision["source"] == f"s3://{BUCKET}/inbox"
    assert any(f"/{decision['monitoring_run_id']}/artifacts/" in key for key in s3_keys(moto_s3, "mlflow/"))
    ledger = (tmp_path / "worker-home" / "monitoring" / "ledger.json").read_text()
    assert all(key.split("/")[-1] in ledger for key in s3_keys(moto_s3, "inbox/"))  # each image processed once

    # 3. both servers kept their state in PostgreSQL, one database each
    base = postgres.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/steelqc_prefect") as conn:
        runs = conn.execute("SELECT count(*) FROM flow_run WHERE id::text = ANY(%s)", ([training, monitoring],))
        assert runs.fetchone()[0] == 2
    with psycopg.connect(f"{base}/steelqc_mlflow") as conn:
        versions = conn.execute("SELECT count(*) FROM model_versions WHERE name = %s", (model.name,)).fetchone()[0]
        assert versions >= 1
    log.info("topology test: %.0f s", time.monotonic() - start)
