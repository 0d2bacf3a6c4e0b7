"""The registered model: a small MLflow pyfunc that rebuilds the network and loads a state dict.

MLflow 3's ``mlflow.pytorch.log_model`` defaults to ``pt2`` (torch.export: needs an input example and fixes the
input size) and its ``pickle`` format unpickles code on load. Instead the version holds the best checkpoint
(tensors and plain values, loaded with ``weights_only=True``) and ``bundle.json`` (architecture, label space,
input spec, calibrated critical threshold); :class:`SteelDefectModel` rebuilds the network from those.

``mlflow.pyfunc.load_model("models:/steel-defect-classifier@champion")`` gives a model ready for inference:
``predict`` takes image paths (a list, or a DataFrame with a ``path`` column) and returns one record per image
(``image``, ``label``, ``label_id``, ``probabilities``, ``critical``); ``unwrap_python_model()`` exposes
``label_space``, ``threshold``, ``spec`` and the torch ``model``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BUNDLE_VERSION = 1


class SteelDefectModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: checkpoint + bundle -> predictions with the safety-first decision rule."""

    def load_context(self, context: Any) -> None:
        self.load(Path(context.artifacts["checkpoint"]), Path(context.artifacts["bundle"]))

    def load(self, checkpoint: Path, bundle_path: Path, device: str | None = None) -> SteelDefectModel:
        """Load from files (also used without MLflow, e.g. for a checkpoint on disk)."""
        from tasks.datasets import InputSpec
        from tasks.labels import LabelSpace
        from tasks.train import load_model, select_device

        self.bundle = json.loads(Path(bundle_path).read_text())
        self.device = device or select_device()
        self.model, self.meta = load_model(Path(checkpoint), self.device)
        self.label_space = LabelSpace.from_dict(self.bundle["label_space"])
        self.spec = InputSpec.from_dict(self.bundle["input_spec"])
        self.threshold = self.bundle.get("threshold")
        self.architecture = self.bundle["architecture"]
        return self

    def predict_proba(self, frame: pd.DataFrame, corruption: Any = None, batch_size: int = 32) -> np.ndarray:
        """Class probabilities (N x C, output-index order) for a frame with ``image_id`` and ``path``."""
        from tasks.train import predict_proba

        frame = frame.copy()
        if "image_id" not in frame:
            frame["image_id"] = frame["path"].map(lambda p: Path(p).name)
        return predict_proba(
            self.model,
            frame,
            self.label_space,
            self.spec,
            batch_size=batch_size,
            device=self.device,
            corruption=corruption,
        )

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Predicted output indices under the calibrated critical threshold."""
        from tasks.evaluate import decide

        return decide(proba, self.label_space.critical_index, self.threshold)

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> pd.DataFrame:
        frame = _as_frame(model_input)
        proba = self.predict_proba(frame)
        chosen = self.decide(proba)
        names = self.label_space.names
        critical = self.label_space.critical_index
        return pd.DataFrame(
            {
                "image": frame["path"].astype(str).tolist(),
                "label": [names[i] for i in chosen],
                "label_id": [self.label_space.id_of(i) for i in chosen],
                "probabilities": [dict(zip(names, map(float, row), strict=True)) for row in proba],
                "critical": [bool(i == critical) for i in chosen],
            }
        )


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        if "path" not in model_input:
            if model_input.shape[1] == 1:
                return model_input.set_axis(["path"], axis=1)
            raise ValueError("input DataFrame needs a 'path' column")
        return model_input
    if isinstance(model_input, str | Path):
        model_input = [model_input]
    return pd.DataFrame({"path": [str(p) for p in model_input]})


def make_bundle(architecture: str, label_space: Any, input_spec: dict, threshold: float | None, **extra: Any) -> dict:
    """The bundle.json a version carries next to its checkpoint."""
    return {
        "bundle_version": BUNDLE_VERSION,
        "architecture": architecture,
        "label_space": label_space.to_dict(),
        "input_spec": input_spec,
        "threshold": threshold,
        **extra,
    }


def log_pyfunc(checkpoint: Path, bundle: dict, name: str = "model") -> str:
    """Log checkpoint + bundle as a pyfunc model in the active MLflow run; returns the model URI."""
    import torch
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        bundle_path = Path(tmp) / "bundle.json"
        bundle_path.write_text(json.dumps(bundle, indent=2, default=str))
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=SteelDefectModel(),
            artifacts={"checkpoint": str(checkpoint), "bundle": str(bundle_path)},
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"torchvision=={torchvision.__version__.split('+')[0]}",
                f"mlflow=={mlflow.__version__}",
                "steelqc",
            ],
        )
    return info.model_uri


def load(model_uri: str) -> SteelDefectModel:
    """Load a registered or logged steelqc model (``models:/name@alias``, ``runs:/...``) ready for inference."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
