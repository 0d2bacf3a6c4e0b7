"""The shadow comparison of the approval request on a real registry: the images people reviewed at the line are
scored by the registered models (loaded as every model is), and the figures agree with `steelqc predict`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from steelqc.flows.approval import shadow_on_reviewed
from steelqc.monitoring.review import open_review_queue
from steelqc.monitoring.review_labels import LabelDesk, LabelRow
from steelqc.tasks.config import Settings
from tests.helpers import Champion, run

pytestmark = pytest.mark.slow

N_REVIEWED = 6


def review(settings: Settings, images: list[Path], labels: list[str]) -> None:
    """Queue ``images`` as the drift monitor does and label them through the label desk."""
    rows = [
        {"uri": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "predicted": "ok", "confidence": 0.5,
         "critical_proba": 0.1, "novel": False, "reasons": ["least-confident"]}
        for p in images
    ]  # fmt: skip
    open_review_queue(settings.review_queue, settings).add(pd.DataFrame(rows), run_id="monitor-1")
    desk = LabelDesk.open(settings)
    desk.apply([LabelRow(r["sha256"], label, "ann", i) for i, (r, label) in enumerate(zip(rows, labels, strict=True))])


def test_both_models_score_the_reviewed_images_as_predict_does(
    champion: Champion, steelqc_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEELQC_TRACKING_URI", f"sqlite:///{champion.home / 'mlflow.db'}")
    settings = Settings()
    name, version = settings.registered_model, champion.summary["model_version"]
    assert shadow_on_reviewed(settings, name, version, version) is None  # nothing reviewed yet

    images = sorted((champion.data / "train_images").glob("*.jpg"))[:N_REVIEWED]
    labels = ["crack", "ok", "scratch", "crack", "dent", "ok"]
    review(settings, images, labels)
    code, predicted, stderr = run("predict", "--model", f"models:/{name}/{version}", str(settings.reviewed_dir),
                                  "--json", home=steelqc_home)  # fmt: skip
    assert code == 0 and predicted is not None, stderr[-3000:]
    said = {Path(r["image"]).stem: r["label"] for r in predicted["predictions"]}
    truth = {hashlib.sha256(p.read_bytes()).hexdigest(): label for p, label in zip(images, labels, strict=True)}
    assert sorted(said) == sorted(truth)

    shadow = shadow_on_reviewed(settings, name, version, version)
    assert shadow is not None and shadow["n_images"] == N_REVIEWED and shadow["critical"] == settings.critical_class
    new, old = shadow["challenger"], shadow["champion"]
    assert new["version"] == old["version"] == version
    assert shadow["n_disagree"] == 0 and new["classes"] == old["classes"]  # one model on both sides
    hits = sum(said[sha] == label for sha, label in truth.items())
    assert new["accuracy"] == pytest.approx(hits / N_REVIEWED)
    crack = next(r for r in new["classes"] if r["class"] == "crack")
    assert crack["support"] == 2 and crack["predicted"] == sum(label == "crack" for label in said.values())
    missed = sum(label == "crack" and said[sha] != "crack" for sha, label in truth.items())
    assert new["missed_critical"] == missed

    gone = next(iter((settings.reviewed_dir / "ok").iterdir()))
    gone.unlink()  # a reviewed image whose file is gone is left out, not an error
    assert shadow_on_reviewed(settings, name, version, None)["n_images"] == N_REVIEWED - 1
