"""`steelqc gc` on a real home: a real MLflow store whose registered versions name their run folders, old and new run
folders, drift-monitor runs, decision-log days, server logs, review-queue entries and image-cache entries."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from steelqc.model_registry.retention import RUN_DIR_TAG
from steelqc.tasks.config import Settings
from tests.helpers import free_port, run

DAY = 86_400
NAME = Settings.model_fields["registered_model"].default
LIMITS = {
    "STEELQC_GC__KEEP_RUNS": "2",
    "STEELQC_GC__KEEP_MONITOR_RUNS": "1",
    "STEELQC_GC__DECISIONS_DAYS": "400",
    "STEELQC_GC__REVIEW_DAYS": "90",
    "STEELQC_GC__LOGS_MAX_BYTES": "1000",
    "STEELQC_GC__MIN_AGE_HOURS": "24",
    "STEELQC_CACHE__MAX_BYTES_DISK": "2500",
}


def folder(path: Path, days_old: float, payload: int = 1000) -> Path:
    """A folder holding one file of ``payload`` bytes, last changed ``days_old`` days ago."""
    (path / "evaluation").mkdir(parents=True)
    (path / "evaluation" / "metrics.json").write_bytes(b"x" * payload)
    return age(path, days_old)


def age(path: Path, days_old: float) -> Path:
    stamp = time.time() - days_old * DAY
    for item in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(item, (stamp, stamp), follow_symlinks=False)
    return path


def register(c: MlflowClient, run_dir: Path, alias: str | None = None) -> str:
    """A version of the registered model whose training run names ``run_dir`` (as the training flow tags it)."""
    experiment = c.get_experiment_by_name("steel-defects") or c.get_experiment(c.create_experiment("steel-defects"))
    run_id = c.create_run(experiment.experiment_id, tags={RUN_DIR_TAG: str(run_dir)}).info.run_id
    if not c.search_registered_models(f"name='{NAME}'"):
        c.create_registered_model(NAME)
    version = c.create_model_version(NAME, f"runs:/{run_id}/model", run_id).version
    if alias:
        c.set_registered_model_alias(NAME, alias, version)
    return str(version)


def queue_entry(root: Path, seed: str, days_old: float, voted: bool) -> tuple[Path, Path]:
    sha = hashlib.sha256(seed.encode()).hexdigest()
    image = root / "images" / f"{sha}.jpg"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"jpeg" * 100)
    queued = (datetime.now(UTC) - timedelta(days=days_old)).isoformat(timespec="seconds")
    entry = {"sha256": sha, "image": str(image), "queued_at": queued, "reasons": ["novel"]}
    if voted:
        entry["labels"] = [{"label": "crack", "reviewer": "ann", "at": queued}]
    path = root / "queue" / f"{sha}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry))
    return path, image


@pytest.fixture
def home(store: tuple[Settings, MlflowClient], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A home with something of every kind gc looks at; returns the paths that matter by name."""
    settings, c = store
    h, runs = settings.home, settings.home / "runs"
    p = {f"run{i}": folder(runs / f"train-2026010{i}-000000-aaaaa{i}", days_old=10 - i) for i in range(5)}
    p["newest"] = folder(runs / "ingest-20260201-000000-ffffff", days_old=3)
    p["resumed"] = folder(runs / "train-20251231-000000-eeeeee", days_old=0.1)  # the oldest, resumed an hour ago
    register(c, p["run0"], "champion")  # the oldest two are needed by registered versions
    register(c, p["run1"])
    monitor = h / "monitoring" / "runs"
    p |= {f"mon{i}": folder(monitor / f"monitor-2026010{i}-000000-bbbbb{i}", days_old=5 - i) for i in range(3)}
    today = datetime.now(UTC)
    for name, days in (("today", 0), ("old_day", 500)):
        p[name] = h / "decisions" / f"{(today - timedelta(days=days)):%Y-%m-%d}.jsonl"
        p[name].parent.mkdir(parents=True, exist_ok=True)
        p[name].write_text('{"decision": "ok"}\n' * 10)
    p["log"] = h / "servers" / "mlflow.log"
    p["log"].parent.mkdir(parents=True)
    p["log"].write_text("".join(f"line {i:04d} of the server log\n" for i in range(100)))  # 2,900 bytes
    queue = h / "review"
    p["stale"], p["stale_image"] = queue_entry(queue, "stale", 120, voted=False)
    p["voted"], _ = queue_entry(queue, "voted", 120, voted=True)
    p["recent"], _ = queue_entry(queue, "recent", 5, voted=False)
    cache = settings.cache.root(h) / "ab"
    cache.mkdir(parents=True)
    for i in range(4):  # 4 x 1,000 bytes over a 2,500-byte limit: the two least recently used go
        entry = cache / f"{i:02d}entry.npy"
        entry.write_bytes(b"n" * 1000)
        os.utime(entry, (time.time() - (4 - i) * 60,) * 2)
    untouched = [h / "split_ledger.csv", h / "exports" / "export-1" / "bundle.json", h / "reviewed" / "crack" / "a.jpg"]
    for path in untouched:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep")
    for key, value in LIMITS.items():
        monkeypatch.setenv(key, value)
    return p | {f"keep{i}": path for i, path in enumerate(untouched)} | {"mlflow.db": h / "mlflow.db"}


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_gc_removes_what_settings_bound_and_keeps_what_a_version_needs(home: dict[str, Path]) -> None:
    root = home["mlflow.db"].parent
    before = snapshot(root)
    code, dry, err = run("gc", "--dry-run", "--json")
    assert code == 0, err
    assert snapshot(root) == before  # a dry run touches nothing
    gone = {home[k] for k in ("run2", "run3", "mon0", "mon1", "old_day", "stale", "stale_image")}
    cache_gone = {str(p) for p in sorted((root / "cache" / "images" / "ab").iterdir())[:2]}
    assert {r["path"] for r in dry["removed"]} == {*map(str, gone), str(home["log"]), *cache_gone}
    assert dry["kept"][str(home["run0"])] == f"needed by {NAME} v1 (champion)"
    assert dry["kept"][str(home["run1"])] == f"needed by {NAME} v2"
    assert dry["kept"][str(home["resumed"])] == "changed within the last 24 h"

    code, done, err = run("gc", "--json")
    assert code == 0 and not done["dry_run"] and not done["errors"], err
    assert done["freed_bytes"] == dry["freed_bytes"] == sum(r["bytes"] for r in done["removed"]) > 0
    assert not any(path.exists() for path in gone) and not any(Path(p).exists() for p in cache_gone)
    kept = ("run0", "run1", "run4", "newest", "resumed", "mon2", "today", "voted", "recent", "keep0", "keep1", "keep2")
    assert all(home[k].exists() for k in kept), [k for k in kept if not home[k].exists()]
    log_text = home["log"].read_text()
    assert len(log_text.encode()) <= 500 + 50 and log_text.endswith("line 0099 of the server log\n")
    assert log_text.startswith("--- cut by steelqc gc") and log_text.splitlines()[1].startswith("line ")
    assert str(MlflowClient().get_model_version_by_alias(NAME, "champion").version) == "1"  # the registry as it was

    code, again, _ = run("gc", "--json")
    assert code == 0 and again["removed"] == []  # nothing left to do


def test_gc_removes_nothing_when_the_registry_cannot_be_read(home: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv("STEELQC_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("STEELQC_MLFLOW_HTTP_RETRIES", "0")
    before = snapshot(home["mlflow.db"].parent)
    code, out, _ = run("gc", "--json")
    assert code == 1 and out["fault"] == "mlflow-unreachable" and "before anything is removed" in out["error"], out
    assert snapshot(home["mlflow.db"].parent) == before
