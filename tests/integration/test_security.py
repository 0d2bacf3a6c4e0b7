"""Security and keeping it running, on real servers: MLflow with basic auth over a PostgreSQL store (infra/postgres.sh),
a tiny champion trained through it with every kind of credential set, then: requests without credentials refused,
no credential anywhere steelqc writes (stdout, stderr, logs, run folders, Prefect artifacts and logs, MLflow), and
a backup of the databases and the artifact store restored after they were wiped, the champion loading again."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings

from steelqc.tasks.config import Settings
from tests.helpers import RELAXED, ROOT, STEELQC, free_port

pytestmark = pytest.mark.slow

NAME = Settings.model_fields["registered_model"].default
DB_PASSWORD, MLFLOW_PASSWORD, PREFECT_AUTH = "Db-S3cret-pw1", "Mlf-S3cret-pw2", "ops:Pf-S3cret-pw3"
AWS_SECRET, WEBHOOK_TOKEN, FLASK_KEY = "Aws-S3cret-key4", "Wh-S3cret-tok5", "Fl-S3cret-key6"
SECRETS = [DB_PASSWORD, MLFLOW_PASSWORD, "Pf-S3cret-pw3", AWS_SECRET, WEBHOOK_TOKEN, FLASK_KEY]
SECRETS += [base64.b64encode(s.encode()).decode() for s in (f"admin:{MLFLOW_PASSWORD}", PREFECT_AUTH)]
FRAGMENT = "3cret-"
"""In every secret above: a secret shown in part (pydantic cuts long inputs short) is a leak too."""


@dataclass
class Secured:
    """The module's servers and champion: the clients' environment, the home, every command's output so far."""

    env: dict[str, str]
    server_env: dict[str, str]
    home: Path
    mlflow_url: str
    database_url: str
    summary: dict
    outputs: list[tuple[str, str]] = field(default_factory=list)

    def cli(self, *args: str, env: dict[str, str] | None = None, code: int | None = 0) -> dict:
        """Run a steelqc command; its output is kept for the leak check, its JSON returned."""
        proc = subprocess.run([*STEELQC, *args, "--json"], env=env or self.env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        self.outputs.append((" ".join(args), proc.stdout + proc.stderr))
        assert code is None or proc.returncode == code, f"{args}: {proc.returncode}\n{proc.stderr[-3000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1])


class _NotFound(BaseHTTPRequestHandler):
    """A webhook that answers 404: the notification's error then names the URL (with its token)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def webhook_404() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T0/{WEBHOOK_TOKEN}"
    server.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A PostgreSQL cluster for the module; its URL carries a password (the cluster trusts loopback and ignores it,
    so it only has to stay secret)."""
    if shutil.which("pg_ctl") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("PostgreSQL is not installed")
    folder = Path(tempfile.mkdtemp(prefix="steelqc-pg-"))
    script = ROOT / "infra" / "postgres.sh"
    url = subprocess.run([str(script), "start", str(folder)], check=True, capture_output=True, text=True).stdout
    try:
        yield url.strip().replace("steelqc@", f"steelqc:{DB_PASSWORD}@")
    finally:
        subprocess.run([str(script), "stop", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, cluster: str, prefect_api: dict, champion_data: Path, webhook_404: str
) -> Iterator[Secured]:
    """`steelqc server start` (MLflow, basic auth, PostgreSQL store, artifacts in a folder) and `steelqc train
    --profile tiny` through it, with a credential of every kind in the environment (no review candidates: not
    what this module tests)."""
    home = tmp_path_factory.mktemp("secured") / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEELQC_", "PREFECT_API_", "MLFLOW_"))}
    env.update(prefect_api, **RELAXED, STEELQC_REVIEW_LABEL_ISSUES="0", STEELQC_REVIEW_CONFIDENT_MISTAKES="0")
    env.update(
        STEELQC_HOME=str(home), STEELQC_DATABASE_URL=cluster, STEELQC_MLFLOW_AUTH="true", STEELQC_MLFLOW_PORT=str(port),
        MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=MLFLOW_PASSWORD,
        MLFLOW_FLASK_SERVER_SECRET_KEY=FLASK_KEY, PREFECT_API_AUTH_STRING=PREFECT_AUTH,
        AWS_ACCESS_KEY_ID="steelqc", AWS_SECRET_ACCESS_KEY=AWS_SECRET, STEELQC_ALERT_WEBHOOK_URL=webhook_404,
        STEELQC_OPTUNA_STORAGE=cluster.replace("/postgres", "/steelqc_optuna"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    state = Secured({**env, "STEELQC_TRACKING_URI": url}, env, home, url, cluster, {})
    started = state.cli("server", "start", "--only", "mlflow", env=env)
    assert started["mlflow_auth"] and started["servers"]["mlflow"]["healthy"], started
    try:
        state.summary = state.cli("train", "--data", str(champion_data), "--profile", "tiny")
        assert state.summary["promoted"], state.summary
        yield state
    finally:
        subprocess.run([*STEELQC, "server", "stop", "--json"], env=env, capture_output=True, timeout=120)


def http_status(url: str, user: str | None = None, password: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_mlflow_refuses_requests_without_credentials(secured: Secured) -> None:
    search = f"{secured.mlflow_url}/api/2.0/mlflow/registered-models/search"
    assert http_status(search)[0] == 401
    assert http_status(search, "admin", "wrong-password")[0] == 401
    status, body = http_status(search, "admin", MLFLOW_PASSWORD)
    assert status == 200
    model = next(m for m in json.loads(body)["registered_models"] if m["name"] == NAME)
    assert {"alias": "champion", "version": secured.summary["model_version"]} in model["aliases"]
    assert http_status(f"{secured.mlflow_url}/health")[0] == 200  # `steelqc server status` needs no credentials


def _live_queue_entry(home: Path, image: Path) -> str:
    """An image the drift monitor queued as `ok` (so labelling it crack raises the missed-critical alert)."""
    data = image.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    copy = home / "review" / "images" / f"{sha}.jpg"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(data)
    entry = {"sha256": sha, "image": str(copy), "source_uri": str(image), "reasons": ["novel"], "predicted": "ok",
             "confidence": 0.9, "queued_at": "2026-12-01T00:00:00+00:00", "monitoring_run": "r1"}  # fmt: skip
    (home / "review" / "queue" / f"{sha}.json").parent.mkdir(parents=True, exist_ok=True)
    (home / "review" / "queue" / f"{sha}.json").write_text(json.dumps(entry))
    return sha


def _prefect_records(prefect_api: dict, flow_run_id: str) -> list[tuple[str, str]]:
    """The flow run's parameters, markdown artifacts and logs on the Prefect server."""
    run_id = UUID(flow_run_id)
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        flow_run = client.read_flow_run(run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert any(a.key == "training-summary" for a in artifacts) and logs
    return (
        [("prefect parameters", json.dumps(flow_run.parameters, default=str))]
        + [(f"prefect artifact {a.key}", str(a.data)) for a in artifacts]
        + [("prefect logs", "\n".join(entry.message for entry in logs))]
    )


def _mlflow_records(secured: Secured) -> list[tuple[str, str]]:
    """The training run's parameters and tags, the version's tags and source, through the authenticated server."""
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=MLFLOW_PASSWORD)
    try:
        client = MlflowClient(secured.mlflow_url, registry_uri=secured.mlflow_url)
        run = client.get_run(secured.summary["run_id"])
        version = client.get_model_version(NAME, secured.summary["model_version"])
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
    return [("mlflow run", json.dumps({**run.data.params, **run.data.tags})),
            ("mlflow version", json.dumps({**version.tags, "source": version.source}))]  # fmt: skip


def _home_files(home: Path) -> list[tuple[str, str]]:
    """Every file under the home, as text (bytes decoded leniently); the auth ini must hold the users' database URL
    and is checked to be private instead."""
    ini = home / "servers" / "mlflow-auth.ini"
    assert ini.stat().st_mode & 0o777 == 0o600 and DB_PASSWORD in ini.read_text()
    return [(str(p), p.read_bytes().decode("latin-1")) for p in sorted(home.rglob("*")) if p.is_file() and p != ini]


def test_no_credential_is_ever_printed_logged_or_stored(secured: Secured, prefect_api: dict, champion_data) -> None:
    secured.cli("server", "status", code=1)  # Prefect is not started here: exit 1, and the storage URLs are masked
    bad = {**secured.env, "STEELQC_DATABASE_URL": secured.database_url.replace("postgresql:", "mysql:")}
    assert "mysql" in secured.cli("server", "status", env=bad, code=2)["error"]  # invalid settings, named
    down = {**secured.env, "STEELQC_DATABASE_URL": secured.database_url.rsplit(":", 1)[0] + f":{free_port()}/postgres"}
    assert "server start failed" in secured.cli("server", "start", "--only", "mlflow", env=down, code=1)["error"]
    sha = _live_queue_entry(secured.home, sorted((champion_data / "train_images").iterdir())[0])
    labelled = secured.cli("review", "label", sha, "crack", "--reviewer", "qa")
    assert labelled["alerts"] and not labelled["alerts"][0]["notified"]  # the webhook answered 404: a logged failure
    assert any("could not send the missed-critical notification" in out for _, out in secured.outputs)

    texts = secured.outputs + _home_files(secured.home)
    texts += _prefect_records(prefect_api, secured.summary["flow_run_id"]) + _mlflow_records(secured)
    leaks = [(where, secret) for where, text in texts for secret in [*SECRETS, FRAGMENT] if secret in text]
    assert not leaks, leaks
    assert any("steelqc:***@" in out for _, out in secured.outputs)  # masked, not dropped: the URL stays readable


def test_backup_wipe_restore_and_the_champion_loads(secured: Secured, champion_data: Path) -> None:
    backup = secured.home.parent / "backup"
    run = lambda *args, code=0: secured_script(secured, *args, code=code)  # noqa: E731
    made = run("backup.sh", str(backup), "--json")
    assert {"steelqc_mlflow", "steelqc_mlflow_auth"} <= set(made["databases"]) and made["artifacts"].endswith(
        "mlartifacts"
    )
    assert backup.stat().st_mode & 0o777 == 0o700
    refused = run("restore.sh", str(backup), "--json", code=2)  # everything is still there
    assert "already hold tables" in refused["error"] and "--replace" in refused["error"]

    subprocess.run([*STEELQC, "server", "stop", "--json"], env=secured.env, capture_output=True, timeout=120)
    with psycopg.connect(secured.database_url, autocommit=True) as conn:
        for name in made["databases"]:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    shutil.rmtree(secured.home / "mlartifacts")
    restored = run("restore.sh", str(backup), "--replace", "--json")
    assert restored["databases"] == made["databases"]

    assert secured.cli("server", "start", "--only", "mlflow", env=secured.server_env)["mlflow_auth"]
    image = sorted((champion_data / "train_images").iterdir())[0]
    out = secured.cli("predict", "--model", f"models:/{NAME}@champion", str(image))
    assert out["model_version"] == secured.summary["model_version"] and out["predictions"][0]["label"], out


def secured_script(secured: Secured, script: str, *args: str, code: int = 0) -> dict:
    """Run infra/backup.sh or infra/restore.sh with the servers' settings; its JSON."""
    env = {**secured.env, "PYTHON": str(Path(STEELQC[0]).with_name("python"))}
    proc = subprocess.run([str(ROOT / "infra" / script), *args], env=env, capture_output=True, text=True, timeout=300)
    secured.outputs.append((script, proc.stdout + proc.stderr))
    assert proc.returncode == code, f"{script}: {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
