"""The drift monitor against real components: the session's Prefect server, the session champion's MLflow store
(SQLite), a moto S3 server over HTTP, the CLI as a subprocess (killed mid-batch and run again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from steelqc.flows.deployments import nightly_deployment
from steelqc.flows.monitoring import drift_monitor
from steelqc.monitoring.monitor import history
from steelqc.monitoring.review import open_review_queue
from steelqc.tasks.config import Settings
from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import STEELQC, Champion, run

pytestmark = pytest.mark.slow

N_DRIFT = 8


def _darkened(out: Path, n: int, seed: int, factor: float = 0.25) -> list[Path]:
    """``n`` generated Severstal images, darkened hard (a failing lamp), as JPEGs in ``out``."""
    data = out.parent / f".gen-{out.name}-{seed}"
    generate_dataset(data, n_images=n, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in sorted((data / "train_images").glob("*.jpg")):
        pixels = np.asarray(Image.open(src).convert("L"), dtype=np.float32) * factor
        paths.append(out / f"dark-{seed}-{src.name}")
        Image.fromarray(pixels.astype(np.uint8), "L").save(paths[-1], "JPEG", quality=90)
    return paths


@pytest.fixture
def monitor_env(monkeypatch: pytest.MonkeyPatch, champion: Champion, prefect_env: dict, steelqc_home: Path) -> Path:
    """The test's own STEELQC_HOME (ledger, inbox, review queue, monitoring artifacts) on the champion's store."""
    monkeypatch.setenv("STEELQC_TRACKING_URI", f"sqlite:///{(champion.home / 'mlflow.db').resolve()}")
    monkeypatch.setenv("STEELQC_MONITOR_MIN_IMAGES", "5")
    monkeypatch.setenv("STEELQC_MONITOR_BATCH_SIZE", "8")
    monkeypatch.setenv("STEELQC_REVIEW_LEAST_CONFIDENT", "2")
    monkeypatch.setenv("STEELQC_REVIEW_DRIFT_SAMPLE", "2")
    monkeypatch.setenv("STEELQC_MONITORING_EXPERIMENT", f"steel-monitoring-{steelqc_home.parent.name}")
    return steelqc_home


def _retrain_runs(deployment_id: str) -> dict[str, dict]:
    """Flow runs of the deployment that someone started (not the scheduler's), by id -> parameters."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])), limit=200
        )
    return {str(r.id): r.parameters for r in runs if "auto-scheduled" not in (r.tags or [])}


def test_drift_starts_one_retrain_per_cooldown_or_asks_for_labels(
    monitor_env: Path, champion: Champion, moto_s3, webhook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = webhook
    monkeypatch.setenv("STEELQC_ALERT_WEBHOOK_URL", url)
    new_labels = tmp_path / "nightly"
    generate_dataset(new_labels, n_images=12, seed=77)  # labelled images the champion has not seen
    monkeypatch.setenv("STEELQC_NIGHTLY_DATA", str(new_labels))
    deployment_id = str(nightly_deployment(Settings()).apply())
    before = _retrain_runs(deployment_id)

    # 1. a drifting batch in a folder, new labelled data: one retrain, with the reason as its parameter
    folder = tmp_path / "inbox"
    _darkened(folder, N_DRIFT, seed=5)
    first = drift_monitor(incoming=str(folder)).to_dict()
    assert first["drift_detected"] and first["n_images"] == N_DRIFT and first["quarantined"] == 0, first
    assert first["decision"] == "start" and first["retrain_triggered"], first
    started = {k: v for k, v in _retrain_runs(deployment_id).items() if k not in before}
    assert list(started) == [first["retrain_flow_run_id"]]
    reason = started[first["retrain_flow_run_id"]]["reason"]
    assert "drift" in reason and first["monitoring_run_id"] in reason
    assert Path(first["report"]).is_file() and Path(first["report"]).stat().st_size > 10_000

    # 2. a second drifting batch, from S3, inside the cool-down: none started
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="factory")
    for path in _darkened(tmp_path / "for-s3", N_DRIFT, seed=6):
        s3.upload_file(str(path), "factory", f"inbox/line-2/{path.name}")
    second = drift_monitor(incoming="s3://factory/inbox").to_dict()
    assert second["drift_detected"] and second["n_images"] == N_DRIFT, second
    assert second["decision"] == "skip-cooldown" and not second["retrain_triggered"], second
    assert "cool-down" in second["reason"]
    assert not (Path(second["run_dir"]) / "staging").exists()  # downloaded copies deleted
    assert {k for k in _retrain_runs(deployment_id) if k not in before} == {first["retrain_flow_run_id"]}

    # 3. no new labelled data (the nightly data is the champion's own): none started, the alert asks for labels
    monkeypatch.setenv("STEELQC_NIGHTLY_DATA", str(champion.data))
    monkeypatch.setenv("STEELQC_RETRAIN_COOLDOWN_S", "0")  # the cool-down is not what holds it back here
    received.clear()
    _darkened(folder, N_DRIFT, seed=8)
    third = drift_monitor(incoming=str(folder)).to_dict()
    assert third["drift_detected"] and third["n_images"] == N_DRIFT, third  # only the new images
    assert third["decision"] == "ask-for-labels" and not third["retrain_triggered"], third
    assert {k for k in _retrain_runs(deployment_id) if k not in before} == {first["retrain_flow_run_id"]}
    asks = [a for a in received if "labels" in a.get("title", "")]
    assert len(asks) == 1 and third["monitoring_run_id"] in asks[0]["text"], received

    # the review queue holds the picked images (least confident and a drift sample of each batch), with copies
    entries = open_review_queue(Settings().review_queue, Settings()).list()
    mine = [e for e in entries if e["monitoring_run"] == third["monitoring_run_id"]]
    assert third["review_queued"] == len(mine) >= 2 + 2
    assert all(Path(e["image"]).is_file() and e["source_uri"].startswith(str(folder)) for e in mine)
    assert {e["model_version"] for e in mine} == {str(champion.summary["model_version"])}  # the champion's guesses
    reasons = {r for e in mine for r in e["reasons"]}
    # the drift sample is drawn from the images no other reason picked: none is left when every image was picked
    assert "least-confident" in reasons and ("drift-sample" in reasons or len(mine) == N_DRIFT), mine
    assert any(e["source_uri"].startswith("s3://factory/inbox/") for e in entries)

    # every decision is in MLflow, newest first, with its figures
    records = history(Settings(), limit=10)
    assert [r["decision"] for r in records] == ["ask-for-labels", "skip-cooldown", "start"]
    assert records[-1]["retrain_flow_run_id"] == first["retrain_flow_run_id"] and records[-1]["n_images"] == N_DRIFT


def _ledger(home: Path) -> dict:
    return json.loads((home / "monitoring" / "ledger.json").read_text())


def test_corrupt_image_quarantined_and_a_killed_monitor_loses_nothing(
    monitor_env: Path, tmp_path: Path, champion: Champion
) -> None:
    inbox = tmp_path / "inbox"
    data = tmp_path / "gen"
    generate_dataset(data, n_images=40, seed=21)
    inbox.mkdir()
    for src in sorted((data / "train_images").glob("*.jpg")):
        (inbox / src.name).write_bytes(src.read_bytes())
    (inbox / "torn.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 20)
    n_good = 40

    # killed once its feature stage has begun: nothing recorded, the ledger untouched
    log = tmp_path / "killed.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*STEELQC, "monitor", "--incoming", str(inbox), "--json"], stdout=subprocess.PIPE, stderr=err,
            env=dict(os.environ), text=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while "features:" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (monitor_env / "monitoring" / "ledger.json").exists(), "killed too late: the batch was recorded"

    # run again: every image once, the torn one quarantined with its reason
    code, summary, stderr = run("monitor", "--incoming", str(inbox), "--json")
    assert code == 0, stderr[-3000:]
    assert (summary["n_images"], summary["quarantined"]) == (n_good, 1), summary
    images = _ledger(monitor_env)["images"]
    assert len(images) == n_good + 1
    assert sorted(e["uri"] for e in images.values()) == sorted(str(p) for p in inbox.iterdir())
    (torn,) = [e for e in images.values() if e["status"] == "quarantined"]
    assert torn["uri"].endswith("torn.jpg") and "unreadable" in torn["reason"]
    assert all(e["run"] == summary["monitoring_run_id"] and not e["copies"] for e in images.values())
    quarantine = Path(summary["quarantine_file"]).read_text()
    assert "torn.jpg" in quarantine and "unreadable" in quarantine

    # and again: nothing new, nothing recorded twice
    code, again, stderr = run("monitor", "--incoming", str(inbox), "--json")
    assert code == 0, stderr[-3000:]
    assert (again["decision"], again["n_images"], again["waiting"]) == ("waiting", 0, 0), again
    assert len(_ledger(monitor_env)["images"]) == n_good + 1

    code, listed, _ = run("monitor", "--history", "--json")
    assert code == 0 and [r["monitoring_run_id"] for r in listed["history"]] == [summary["monitoring_run_id"]]
