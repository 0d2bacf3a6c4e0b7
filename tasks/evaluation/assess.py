"""Assess a trained model on a split: the figures of the metrics contract and the plots, in one folder.

Used by the training pipeline (on the test split, after calibrating the critical threshold on validation) and by
``steelqc evaluate`` (on any data set). Runs without Prefect or MLflow; the caller logs what it writes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from steelqc.tasks.data.datasets import InputSpec, ManifestDataset, read_image
from steelqc.tasks.data.ingest import load_manifest
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.split import load_split
from steelqc.tasks.evaluation.explain import gradcam_gallery, gradcam_maps, image_mask, mean_cam_in_mask
from steelqc.tasks.evaluation.label_issues import PROBABILITIES_FILE, probability_frame
from steelqc.tasks.evaluation.metrics import (
    calibrate_threshold,
    compute_metrics,
    confidence_intervals,
    decide,
    most_confident_mistakes,
    per_source,
    plot_confusion_matrix,
    plot_mistakes,
    plot_roc,
)
from steelqc.tasks.evaluation.robustness import GLARE_VARIANTS, glare_corruption, glare_examples_figure, glare_summary
from steelqc.tasks.model.inference import load_model, predict_proba, select_device
from steelqc.tasks.model.models import gradcam_target_layer

log = logging.getLogger(__name__)

GALLERY_SIZE = 12


def true_indices(frame: pd.DataFrame, label_space: LabelSpace) -> np.ndarray:
    """Output indices of the manifest labels."""
    return np.array([label_space.index_of(label) for label in frame["label"]], dtype=np.int64)


def calibrate(
    model: nn.Module,
    frame: pd.DataFrame,
    label_space: LabelSpace,
    spec: InputSpec,
    target_recall: float,
    batch_size: int = 32,
    device: str = "cpu",
) -> dict:
    """Calibrate the critical threshold on ``frame`` (the validation split)."""
    proba = predict_proba(model, frame, label_space, spec, batch_size=batch_size, device=device)
    return calibrate_threshold(true_indices(frame, label_space), proba, label_space.critical_index, target_recall)


def assess(
    model: nn.Module,
    target_layer: nn.Module | None,
    frame: pd.DataFrame,
    label_space: LabelSpace,
    spec: InputSpec,
    out_dir: Path,
    threshold: float | None,
    masks: pd.DataFrame | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    bootstrap_samples: int = 1000,
    max_cam_images: int = 64,
    calibration: dict | None = None,
    held_classes: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Score ``model`` on ``frame`` clean, dimmed and brightened; write metrics.json (once, with ``calibration``,
    how ``threshold`` was chosen, when given) and the plots. A frame with a ``source`` column gets ``per_source``
    figures too (:func:`~steelqc.tasks.evaluation.metrics.per_source`; ``held_classes``: each source's classes).

    Returns ``{"metrics": {...}, "artifacts": {name: path}, "seconds": float, "proba": the clean probabilities
    (n x classes, ``frame`` order)}``.
    """
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = frame.reset_index(drop=True)
    names, critical = label_space.names, label_space.critical_index
    y_true = true_indices(frame, label_space)
    probas = {
        variant: predict_proba(
            model,
            frame,
            label_space,
            spec,
            batch_size=batch_size,
            device=device,
            corruption=glare_corruption(variant, seed),
        )
        for variant in GLARE_VARIANTS
    }
    clean = probas["clean"]
    metrics = compute_metrics(y_true, clean, names, critical, threshold)
    plain = compute_metrics(y_true, clean, names, critical, None)
    metrics["argmax"] = {k: plain[k] for k in ("macro_f1", "accuracy", "critical_recall", "critical_precision")}
    f1 = {v: compute_metrics(y_true, probas[v], names, critical, threshold)["macro_f1"] for v in GLARE_VARIANTS}
    metrics["glare"] = glare_summary(f1["clean"], f1["dim"], f1["bright"])
    decided = {variant: decide(probas[variant], critical, threshold) for variant in GLARE_VARIANTS}
    y_pred = decided["clean"]
    metrics["confidence_intervals"] = confidence_intervals(
        y_true, y_pred, names, critical, n_boot=bootstrap_samples, seed=seed, variant_preds=decided
    )
    if "source" in frame:
        metrics["per_source"] = per_source(
            y_true, y_pred, frame["source"].astype(str).tolist(), names, critical, held_classes, bootstrap_samples, seed
        )
    artifacts = {
        "confusion_matrix": plot_confusion_matrix(metrics["confusion_matrix"], names, out_dir / "confusion_matrix.png"),
        "roc": plot_roc(y_true, clean, names, out_dir / "roc.png"),
    }
    artifacts["mistakes"] = _mistakes(frame, y_true, y_pred, clean, names, out_dir / "mistakes.png")
    if len(frame):
        artifacts["glare"] = glare_examples_figure(
            read_image(frame.loc[0, "path"]), str(frame.loc[0, "image_id"]), out_dir / "glare.png", seed=seed
        )
    if target_layer is not None and len(frame):
        cam_figures = _gradcam(
            model, target_layer, frame, label_space, spec, y_true, y_pred, masks, out_dir, device, max_cam_images
        )
        metrics["cam_in_mask"] = cam_figures.pop("cam_in_mask")
        metrics["cam_in_mask_n"] = cam_figures.pop("n")
        artifacts.update(cam_figures)
    elif masks is not None:
        metrics["cam_in_mask"] = None
    metrics["predictions"] = {
        "image_id": frame["image_id"].astype(str).tolist(),
        "true": y_true.tolist(),
        "pred": y_pred.tolist(),
    }
    if calibration is not None:
        metrics["calibration"] = calibration
    artifacts = {k: str(v) for k, v in artifacts.items()}
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2))
    artifacts["metrics"] = str(metrics_path)
    return {
        "metrics": metrics,
        "artifacts": artifacts,
        "seconds": round(time.perf_counter() - start, 2),
        "proba": clean,
    }


@dataclass(frozen=True)
class Evaluation:
    """A training run's best checkpoint assessed on its test split: the figures (``metrics``, calibration
    included), the files written (``artifacts``: name -> path) and what registering the model needs."""

    metrics: dict[str, Any]
    artifacts: dict[str, str]
    calibration: dict[str, Any]
    architecture: str
    input_spec: dict[str, Any]
    label_space: LabelSpace

    @property
    def threshold(self) -> float | None:
        return self.calibration["threshold"]


def evaluate_run(
    checkpoint: Path, run_dir: Path, target_recall: float, seed: int = 0, bootstrap_samples: int = 1000
) -> Evaluation:
    """Calibrate the critical threshold on the run's validation split, then :func:`assess` on its test split (clean,
    dim, bright, Grad-CAM inside the RLE masks when ``run_dir/masks.csv`` holds any) into ``run_dir/evaluation``;
    every validation and test image's probabilities go to ``evaluation/probabilities.csv`` (artifact
    ``probabilities``, :mod:`~steelqc.tasks.evaluation.label_issues`)."""
    device = select_device()
    model, meta = load_model(Path(checkpoint), device)
    label_space = LabelSpace.from_dict(meta["label_space"])
    spec = InputSpec.from_dict(meta["input_spec"])
    val, test = load_split(run_dir, "val"), load_split(run_dir, "test")
    val_proba = predict_proba(model, val, label_space, spec, device=device)
    calibration = calibrate_threshold(
        true_indices(val, label_space), val_proba, label_space.critical_index, target_recall
    )
    masks_path = Path(run_dir) / "masks.csv"
    masks = pd.read_csv(masks_path, dtype={"image_id": str}) if masks_path.exists() else None
    result = assess(
        model,
        gradcam_target_layer(model, meta["model_name"]),
        test,
        label_space,
        spec,
        Path(run_dir) / "evaluation",
        calibration["threshold"],
        masks=masks if masks is not None and len(masks) else None,
        seed=seed,
        device=device,
        bootstrap_samples=bootstrap_samples,
        calibration=calibration,
        held_classes=held_by_source(Path(run_dir)),
    )
    evaluated = {"val": (val, val_proba), "test": (test, result["proba"])}
    artifacts = {**result["artifacts"], "probabilities": str(_write_probabilities(run_dir, evaluated, label_space))}
    return Evaluation(result["metrics"], artifacts, calibration, meta["model_name"], meta["input_spec"], label_space)


def _write_probabilities(
    run_dir: Path, evaluated: dict[str, tuple[pd.DataFrame, np.ndarray]], label_space: LabelSpace
) -> Path:
    """``run_dir/evaluation/probabilities.csv``: every evaluated image (split by split) with its probabilities."""
    parts = []
    for split, (frame, proba) in evaluated.items():
        rows = pd.DataFrame({
            "image_id": frame["image_id"].astype(str).to_numpy(),
            "path": frame["path"].astype(str).to_numpy(),
            "sha256": frame["sha256"].astype(str).to_numpy(),
            "split": split,
            "label": [label_space.names[i] for i in true_indices(frame, label_space)],
            "label_index": true_indices(frame, label_space),
        })  # fmt: skip
        parts.append(probability_frame(rows, proba, label_space.names))
    path = Path(run_dir) / "evaluation" / PROBABILITIES_FILE
    pd.concat(parts, ignore_index=True).to_csv(path, index=False)
    return path


def held_by_source(run_dir: Path) -> dict[str, list[str]] | None:
    """Each source's class names over all its images (``run_dir/manifest.csv``); None without a ``source`` column."""
    path = Path(run_dir) / "manifest.csv"
    manifest = load_manifest(path) if path.exists() else None
    if manifest is None or "source" not in manifest:
        return None
    return {str(s): sorted(set(group["label_name"].astype(str))) for s, group in manifest.groupby("source")}


def _mistakes(
    frame: pd.DataFrame, y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, names: list[str], path: Path
) -> Path:
    picked = most_confident_mistakes(y_true, y_pred, proba, n=20)
    return plot_mistakes(
        [read_image(frame.loc[i, "path"]) for i in picked],
        [names[y_true[i]] for i in picked],
        [names[y_pred[i]] for i in picked],
        [float(proba[i, y_pred[i]]) for i in picked],
        path,
    )


def _gradcam(
    model: nn.Module,
    target_layer: nn.Module,
    frame: pd.DataFrame,
    label_space: LabelSpace,
    spec: InputSpec,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    masks: pd.DataFrame | None,
    out_dir: Path,
    device: str,
    max_images: int,
) -> dict[str, Any]:
    """Grad-CAM gallery, and the share of CAM energy inside the true mask over correct defect images."""
    ok_index = label_space.index_of(0) if 0 in label_space.class_names else None
    correct_defects = [i for i in range(len(frame)) if y_true[i] == y_pred[i] and y_true[i] != ok_index]
    with_masks = []
    if masks is not None and len(masks):
        masked_ids = set(masks["image_id"].astype(str))
        with_masks = [i for i in correct_defects if str(frame.loc[i, "image_id"]) in masked_ids][:max_images]
    gallery = list(dict.fromkeys(with_masks[:GALLERY_SIZE] + correct_defects + list(range(len(frame)))))
    gallery = gallery[:GALLERY_SIZE]
    chosen = list(dict.fromkeys(with_masks + gallery))
    dataset = ManifestDataset(frame.loc[chosen].reset_index(drop=True), label_space, spec, train=False)
    inputs = torch.stack([dataset[j][0] for j in range(len(chosen))]).to(device)
    was_training = model.training
    model.eval()
    cams = gradcam_maps(model, target_layer, inputs, [int(y_pred[i]) for i in chosen])
    model.train(was_training)
    cam_of = dict(zip(chosen, cams, strict=True))
    pairs = []
    for i in with_masks:
        row = frame.loc[i]
        mask = image_mask(
            masks, str(row["image_id"]), label_space.id_of(y_true[i]), (int(row["height"]), int(row["width"]))
        )
        pairs.append((cam_of[i], mask))
    names = label_space.names
    gallery_masks = None
    if masks is not None and len(masks):
        gallery_masks = [
            image_mask(
                masks,
                str(frame.loc[i, "image_id"]),
                label_space.id_of(y_true[i]),
                (int(frame.loc[i, "height"]), int(frame.loc[i, "width"])),
            )
            for i in gallery
        ]
    path = gradcam_gallery(
        [read_image(frame.loc[i, "path"]) for i in gallery],
        [cam_of[i] for i in gallery],
        [f"{frame.loc[i, 'image_id']}: {names[y_true[i]]} -> {names[y_pred[i]]}" for i in gallery],
        out_dir / "gradcam.png",
        masks=gallery_masks,
    )
    return {"gradcam": path, "cam_in_mask": mean_cam_in_mask(pairs) if pairs else None, "n": len(pairs)}
