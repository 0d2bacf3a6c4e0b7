"""Each registered version carries its drift/novelty reference; older versions get one from their run data."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from steelqc.model_registry import packaging
from steelqc.model_registry.reference import (
    COMPUTED,
    STORED,
    MissingReference,
    champion_reference,
    stored_reference,
)
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings
from steelqc.tasks.data.split import load_split
from tests.helpers import STEELQC, Champion

pytestmark = pytest.mark.slow


def _champion_version(champion: Champion) -> tuple[MlflowClient, object]:
    settings = Settings(home=champion.home)
    configure(settings)
    mlflow_client = client(settings)
    return mlflow_client, mlflow_client.get_model_version_by_alias(settings.registered_model, "champion")


def test_the_trained_version_carries_its_reference(champion: Champion) -> None:
    mlflow_client, version = _champion_version(champion)
    reference = stored_reference(mlflow_client, version.run_id)
    assert reference is not None, "the training pipeline logs reference/ with the run"
    run_dir = Path(champion.summary["run_dir"])
    assert len(reference.rows("train")) == len(load_split(run_dir, "train"))
    assert len(reference.rows("val")) == len(load_split(run_dir, "val"))
    assert reference.projection.k <= 16 and reference.novelty.threshold is not None
    val_scores = reference.rows("val")["novelty"]
    above = int((val_scores > reference.novelty.threshold).sum())
    assert above == 1, f"the 0.99 quantile of {len(val_scores)} validation scores: only the largest lies above it"
    assert reference.meta["critical_threshold"] == pytest.approx(float(version.tags["threshold"]), abs=1e-6)


def test_predict_reports_novelty_from_the_reference(champion: Champion, tmp_path: Path) -> None:
    images = sorted((champion.data / "train_images").glob("*.jpg"))[:3]
    env_home = {"STEELQC_HOME": str(champion.home)}
    proc = subprocess.run(
        [*STEELQC, "predict", "--model", champion.uri, *map(str, images), "--json"],
        capture_output=True, text=True, env={**os.environ, **env_home}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    threshold = out["novelty_threshold"]
    assert isinstance(threshold, float)
    for record in out["predictions"]:
        assert isinstance(record["novelty"], float) and record["novel"] == (record["novelty"] > threshold)
    assert out["novel"] == sum(r["novel"] for r in out["predictions"])


def test_an_older_version_gets_a_reference_computed_from_its_run_data(champion: Champion, tmp_path: Path) -> None:
    champion_client, champion_version = _champion_version(champion)
    model = packaging.load(champion.uri)
    expected = stored_reference(champion_client, champion_version.run_id)

    settings = Settings(home=tmp_path / "home")  # a store whose version was registered without a reference
    configure(settings)
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(settings.experiment).experiment_id
    run = mlflow_client.create_run(experiment, tags={"steelqc.run_dir": champion.summary["run_dir"]})
    mlflow_client.create_registered_model("legacy")
    version = mlflow_client.create_model_version("legacy", "file:///nowhere", run_id=run.info.run_id)

    reference, source = champion_reference(mlflow_client, settings, model, version)
    assert source == COMPUTED
    np.testing.assert_allclose(
        np.abs(reference.projection.components), np.abs(expected.projection.components), atol=1e-3
    )
    assert len(reference.frame) == len(expected.frame)
    again, source = champion_reference(mlflow_client, settings, model, version)
    assert source == STORED and len(again.frame) == len(reference.frame), "computed once, then logged with the run"

    gone = mlflow_client.create_run(experiment, tags={"steelqc.run_dir": str(tmp_path / "deleted-run")})
    orphan = mlflow_client.create_model_version("legacy", "file:///nowhere", run_id=gone.info.run_id)
    with pytest.raises(MissingReference, match=r"legacy v2 was registered without a drift reference.*Retrain"):
        champion_reference(mlflow_client, settings, model, orphan)
