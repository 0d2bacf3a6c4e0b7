"""The training-pipeline flow end to end on a tiny generated data set: real Prefect runs, a real MLflow store.

The tiny profile (simple CNN, 32x192 inputs, one epoch) cannot reach the product's gate thresholds, so the
tests that exercise promotion relax the thresholds through settings (they are settings) and check the mechanics:
registration, aliases, champion comparison, audit trail, rollback, evaluation and inference of the champion (the
session's shared tiny champion, the `champion` fixture of tests/integration/conftest.py).
Model quality is measured by `make demo` and `benchmarks/`, not here.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from steelqc.model_registry.gates import GATE_NAMES
from tests.helpers import RELAXED, Champion, run, shared_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_env")]  # one real Prefect server

METRIC_KEYS = {
    "macro_f1",
    "micro_f1",
    "accuracy",
    "roc_auc_macro",
    "roc_auc_micro",
    "per_class",
    "critical_recall",
    "critical_precision",
    "glare",
    "cam_in_mask",
}
GLARE_KEYS = {"f1_clean", "f1_dim", "f1_bright", "delta_f1", "delta_f1_dim_bright"}


@pytest.fixture(scope="module")
def tiny_data(champion_data: Path) -> Path:
    """The session's 120 generated images (the shared champion was trained on them too)."""
    return champion_data


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def relaxed(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    for key, value in RELAXED.items():
        monkeypatch.setenv(key, value)
    return home


def prefect_post(api: dict, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        f"{api['PREFECT_API_URL']}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def train(data: Path, home: Path, *extra: str) -> dict:
    code, summary, stderr = run("train", "--data", str(data), "--profile", "tiny", *extra, "--json", home=home)
    assert code == 0, stderr[-3000:]
    return summary


def test_two_runs_one_champion_and_an_audit_trail_of_both(tiny_data: Path, relaxed: Path, prefect_api: dict) -> None:
    first = train(tiny_data, relaxed)
    for key in ("run_id", "model_version", "metrics", "gates", "verdict", "promoted", "aliases"):
        assert key in first
    assert set(first["metrics"]) >= METRIC_KEYS and set(first["metrics"]["glare"]) >= GLARE_KEYS
    assert first["verdict"] == {"passed": True, "refused": False, "reason": "all gates passed"} and first["promoted"]
    assert set(first["gates"]) == set(GATE_NAMES)  # the gates only: the verdict is apart
    assert all({"value", "threshold", "passed"} <= set(gate) for gate in first["gates"].values())
    assert first["aliases"] == {"champion": first["model_version"], "challenger": first["model_version"]}
    assert first["champion_before"] is None and first["gates"]["champion"]["passed"]
    run_dir = Path(first["run_dir"])
    for name in ("confusion_matrix.png", "roc.png", "gradcam.png", "mistakes.png", "glare.png", "metrics.json"):
        assert (run_dir / "evaluation" / name).stat().st_size > 0, name
    for split in ("train", "val", "test"):
        assert (run_dir / "splits" / f"{split}.csv").exists()

    second = train(tiny_data, relaxed)
    assert second["model_version"] != first["model_version"]
    assert second["champion_before"]["version"] == first["model_version"]
    assert second["champion_before"]["comparable"] is True
    assert second["promoted"] and second["aliases"]["champion"] == second["model_version"]

    code, hist, _ = run("registry", "history", "--json", home=relaxed)
    assert code == 0
    champion_moves = [e for e in hist["events"] if e["alias"] == "champion" and e["action"] == "promote"]
    assert [e["to_version"] for e in champion_moves] == [first["model_version"], second["model_version"]]
    assert champion_moves[1]["from_version"] == first["model_version"]
    assert {e["run_id"] for e in champion_moves} == {first["run_id"], second["run_id"]}
    assert hist["aliases"]["champion"] == second["model_version"]

    flow_runs = prefect_post(prefect_api, "/flow_runs/filter", {"flows": {"name": {"any_": ["training-pipeline"]}}})
    assert sum(r["state_type"] == "COMPLETED" for r in flow_runs) >= 2
    artifacts = prefect_post(prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["training-summary"]}}})
    assert any(second["run_id"] in (a.get("data") or "") for a in artifacts)

    code, back, _ = run("registry", "rollback", "--reason", "test rollback", "--json", home=relaxed)
    assert code == 0 and back["aliases"]["champion"] == first["model_version"]
    assert back["event"]["action"] == "rollback" and back["event"]["reason"] == "test rollback"


def test_champion_evaluates_and_predicts(tiny_data: Path, champion: Champion) -> None:
    uri = champion.uri
    code, result, stderr = run("evaluate", "--model", uri, "--data", str(tiny_data), "--json", home=champion.home)
    assert code == 0, stderr[-3000:]
    assert set(result["metrics"]) >= METRIC_KEYS and result["n_images"] == 120
    assert result["metrics"]["cam_in_mask"] is None or 0.0 <= result["metrics"]["cam_in_mask"] <= 1.0
    images = sorted((tiny_data / "train_images").iterdir())[:3]
    code, pred, stderr = run("predict", "--model", uri, *map(str, images), "--json", home=champion.home)
    assert code == 0, stderr[-3000:]
    assert [Path(p["image"]).name for p in pred["predictions"]] == [p.name for p in images]
    for record in pred["predictions"]:
        assert set(record) >= {"image", "label", "probabilities", "critical"}
        assert abs(sum(record["probabilities"].values()) - 1.0) < 1e-4
        assert record["critical"] == (record["label"] == "crack")


def test_predict_reports_a_corrupt_image_and_keeps_the_others(
    tiny_data: Path, champion: Champion, tmp_path: Path
) -> None:
    good = sorted((tiny_data / "train_images").iterdir())[:2]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good[0].read_bytes()[:300])  # a truncated JPEG
    missing = tmp_path / "gone.jpg"
    images = [good[0], corrupt, good[1], missing]
    args = ["predict", "--model", champion.uri, *map(str, images), "--json"]
    code, pred, stderr = run(*args, home=champion.home)
    assert code == 0, stderr[-3000:]
    records = pred["predictions"]
    assert [r["image"] for r in records] == [str(p) for p in images] and pred["failed"] == 2
    for record in (records[0], records[2]):
        assert record["label"] in ("ok", "crack", "scratch", "dent", "other") and not record.get("error")
    for record in (records[1], records[3]):
        assert record["label"] is None and record["probabilities"] is None and record["critical"] is None
        assert record["error"]
    assert "unreadable" in records[1]["error"] and "no such file" in records[3]["error"]
    assert str(corrupt) in stderr
    code, strict, _ = run(*args, "--strict", home=champion.home)
    assert code == 1 and strict["failed"] == 2 and len(strict["predictions"]) == 4


def test_evaluate_without_a_usable_image_exits_1(champion: Champion, tmp_path: Path) -> None:
    data = tmp_path / "unusable"
    (data / "train_images").mkdir(parents=True)
    (data / "train_images" / "a.jpg").write_bytes(b"not an image")
    (data / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    args = ["evaluate", "--model", champion.uri, "--data", str(data), "--json"]
    code, result, stderr = run(*args, home=champion.home)
    assert code == 1, stderr[-3000:]
    assert result["n_images"] == 0 and result["quarantined"] == 1
    assert "no usable image" in stderr


def test_strict_gates_keep_the_model_out_and_record_why(tiny_data: Path, tmp_path: Path) -> None:
    home = tmp_path / "strict-home"
    summary = train(tiny_data, home)
    assert not summary["promoted"] and not summary["verdict"]["passed"]
    assert set(summary["gates"]) == set(GATE_NAMES)
    assert "champion" not in summary["aliases"] and "challenger" not in summary["aliases"]
    _code, hist, _ = run("registry", "history", "--json", home=home)
    decision = [e for e in hist["events"] if e["action"] == "not-promoted"]
    assert len(decision) == 1 and decision[0]["to_version"] == summary["model_version"]
    assert decision[0]["reason"] == summary["verdict"]["reason"] == summary["decision"]


def test_real_severstal_sample_scores_with_cam_in_mask(champion: Champion) -> None:
    """The champion scores the 47 real Severstal images (PNG behind .jpg, official masks)."""
    sample = shared_path("severstal-sample")
    code, result, stderr = run(
        "evaluate",
        "--model",
        champion.uri,
        "--data",
        str(sample),
        "--json",
        home=champion.home,
    )
    assert code == 0, stderr[-3000:]
    assert result["n_images"] == 47 and set(result["metrics"]) >= METRIC_KEYS
    per_class = result["metrics"]["per_class"]
    assert {n: per_class[n]["support"] for n in per_class} == {
        "ok": 5,
        "crack": 9,
        "scratch": 1,
        "dent": 29,
        "other": 3,
    }
    assert "cam_in_mask" in result["metrics"]
    json.dumps(result)  # JSON-serialisable throughout


def test_bad_data_exits_2_before_training(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "train.csv").write_text("")
    code, summary, _ = run("train", "--data", str(root), "--profile", "tiny", "--json", home=tmp_path / "h")
    assert code == 2 and "file is empty" in summary["error"]


def test_environment_is_clean() -> None:
    assert os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"
