"""`steelqc export` on a registered tiny champion: one JSON object, an export directory that loads on its own,
parity against torch on the training run's images, the INT8 verdict recorded, the export logged with the version."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from steelqc.model_registry import packaging
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings
from steelqc.tasks.model import export as ex
from tests.helpers import STEELQC, Champion, run


def test_export_json_on_the_champion(champion: Champion, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "plant"
    code, summary, stderr = run("export", "--model", champion.uri, "--out", str(out), "--json", home=champion.home)
    assert code == 0, stderr[-3000:]
    assert summary["out"] == str(out) and summary["model"] == champion.uri
    assert summary["source"]["version"] == champion.summary["model_version"]
    for fmt in ("onnx", "openvino"):
        figures = summary["parity"][fmt]
        assert figures["n_images"] > 0 and figures["max_abs_diff"] < 1e-4 and figures["decision_agreement"] == 1.0
        assert summary["latency"][fmt]["p50_ms"] > 0
    int8 = summary["int8"]
    assert int8["reason"] and set(int8["candidates"]) == {
        "onnx-int8-per-channel", "onnx-int8-per-tensor", "onnx-int8-qoperator", "openvino-int8"
    }  # fmt: skip
    assert all(c["metrics"]["n"] > 0 for c in int8["candidates"].values()), "gated on the test split"
    bundle = json.loads((out / ex.BUNDLE_FILE).read_text())
    assert bundle["int8"] == {"published": int8["published"], "reason": int8["reason"]}
    assert bundle["recommended"] == summary["recommended"]

    # the directory alone predicts what the registered model predicts
    monkeypatch.setenv("STEELQC_HOME", str(champion.home))
    settings = Settings()
    configure(settings)
    registered = packaging.load(champion.uri, device="cpu")
    assert bundle["threshold"] == registered.threshold and bundle["input_spec"] == registered.spec.to_dict()
    images = [str(p) for p in sorted((champion.data / "train_images").glob("*.jpg"))[:4]]
    frame_proba = registered.predict_proba(pd.DataFrame({"path": images}))
    for fmt in ("onnx", "openvino"):
        np.testing.assert_allclose(ex.load_export(out, fmt).predict_proba(images), frame_proba, atol=1e-4)

    # logged as artifacts of the version's run, and the version tagged
    mlflow: MlflowClient = client(settings)
    version = mlflow.get_model_version_by_alias(champion.uri.split("/")[-1].split("@")[0], "champion")
    logged = {a.path for a in mlflow.list_artifacts(version.run_id, "export")}
    assert {"export/bundle.json", "export/parity.json", "export/model.onnx"} <= logged
    assert version.tags.get("export_recommended") == summary["recommended"]


def test_export_human_summary_and_bad_model(champion: Champion, tmp_path: Path) -> None:
    env = {**os.environ, "STEELQC_HOME": str(champion.home)}
    out = tmp_path / "plain"
    proc = subprocess.run(
        [*STEELQC, "export", "--model", champion.uri, "--out", str(out), "--no-int8"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "{" not in proc.stdout and len(proc.stdout.splitlines()) <= 20
    for words in ("export", str(out), "recommended", "max |Δp|", "ms", "INT8 skipped"):
        assert words in proc.stdout, (words, proc.stdout)
    assert not (out / "model.int8.onnx").exists() and not (out / "model.int8.xml").exists()

    code, _, stderr = run("export", "--model", "models:/no-such-model@champion", "--json", home=tmp_path / "home")
    assert code == 2 and "cannot export" in stderr
