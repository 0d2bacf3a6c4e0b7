"""Export a registered (or logged) model for the plant (``steelqc export``): the model is loaded the safe way
(:func:`~steelqc.model_registry.packaging.load`), its training run's folder gives real images (the test split for
parity and the INT8 gate, the training split for INT8 calibration), and the export directory with its figures is
logged as artifacts of the version's MLflow run (``export/``); the version's model card then lists the exported
formats with their latency (:func:`~steelqc.model_registry.card.refresh_card`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from steelqc.model_registry import card, packaging
from steelqc.tasks.model.export import ExportRequest, export_model

log = logging.getLogger(__name__)

RUN_DIR_TAG = "steelqc.run_dir"
EXPORT_ARTIFACT = "export"
EXPORT_TAG = "export_recommended"
PARITY_IMAGES = 8
CALIBRATION_IMAGES = 64


def _run_id(model_uri: str, version: Any) -> str | None:
    if version is not None:
        return version.run_id
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/") :].split("/", 1)[0]
    return None


def _split(run_dir: Path | None, name: str) -> pd.DataFrame | None:
    """``splits/<name>.csv`` of a training run folder (only images that still exist), or None."""
    if run_dir is None or not (run_dir / "splits" / f"{name}.csv").is_file():
        return None
    frame = pd.read_csv(run_dir / "splits" / f"{name}.csv")
    return frame[[Path(p).is_file() for p in frame["path"]]].reset_index(drop=True)


def _spread(frame: pd.DataFrame | None, n: int) -> list[str]:
    """Paths of ``n`` rows spread evenly over ``frame`` (splits are sorted by class: the first rows are one class)."""
    if frame is None or not len(frame):
        return []
    rows = np.unique(np.linspace(0, len(frame) - 1, min(n, len(frame))).round().astype(int))
    return [str(p) for p in frame["path"].iloc[rows]]


def _training_run_dir(client: MlflowClient, run_id: str | None, data: Path | None) -> Path | None:
    if data is not None:
        return Path(data)
    if run_id is None:
        return None
    tag = client.get_run(run_id).data.tags.get(RUN_DIR_TAG)
    return Path(tag) if tag and Path(tag).is_dir() else None


def card_exports(summary: dict[str, Any], logged: str | None) -> dict[str, Any]:
    """What the model card shows of an export: files, recommended format, latency, parity, the INT8 verdict."""
    int8 = summary.get("int8") or {}
    keys = ("files", "recommended", "latency", "parity")
    verdict = {"published": int8.get("published"), "reason": int8.get("reason")}
    return {**{k: summary.get(k) for k in keys}, "int8": verdict, "logged": logged}


def export_registered(
    model_uri: str,
    out: Path,
    client: MlflowClient,
    data: Path | None = None,
    int8: bool = True,
    threads: int = 2,
    log_artifacts: bool = True,
) -> dict[str, Any]:
    """Export ``model_uri`` into ``out``; ``data``: a training run folder (``splits/``) to use instead of the one
    the version's run recorded. Returns the export summary plus ``model``, ``version``, ``run_id``, ``logged``."""
    model = packaging.load(model_uri, device="cpu")
    version = packaging.registered_version(model_uri, client)
    run_id = _run_id(model_uri, version)
    run_dir = _training_run_dir(client, run_id, data)
    test, train = _split(run_dir, "test"), _split(run_dir, "train")
    pool = test if test is not None and len(test) else train
    if pool is None or not len(pool):
        raise ValueError(
            f"no images to check the export on: the training run folder {run_dir or '(unknown)'} has no split "
            "with readable images (pass --data RUN_DIR)"
        )
    source = {
        "model_uri": model_uri,
        "registered_model": version.name if version is not None else None,
        "version": str(version.version) if version is not None else None,
        "run_id": run_id,
        "training_run_dir": str(run_dir) if run_dir else None,
        "weights_sha256": model.bundle.get(packaging.WEIGHTS_TAG),
    }
    request = ExportRequest(
        model=model.model, architecture=model.architecture, label_space=model.label_space, spec=model.spec,
        threshold=model.threshold, source=source, parity_paths=_spread(pool, PARITY_IMAGES),
        calibration_paths=_spread(train, CALIBRATION_IMAGES),
        test_frame=test, int8=int8, threads=threads,
    )  # fmt: skip
    summary = export_model(request, out)
    logged = None
    if log_artifacts and run_id is not None:
        client.log_artifacts(run_id, str(out), artifact_path=EXPORT_ARTIFACT)
        logged = f"runs:/{run_id}/{EXPORT_ARTIFACT}"
        if version is not None:
            client.set_model_version_tag(version.name, version.version, EXPORT_TAG, summary["recommended"])
            card.refresh_card(client, version.name, version.version, exports=card_exports(summary, logged))
        log.info("export logged to %s", logged)
    return {"model": model_uri, "source": source, **summary, "logged": logged}
