"""One image through a loaded model, as the dashboard's *Inspect* page shows it: the safety-first decision, the
probabilities, the critical flag with its threshold, and a Grad-CAM overlay on the image.

No Streamlit here: plain functions over a :class:`~steelqc.model_registry.packaging.SteelDefectModel`, testable
without a browser.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from steelqc.model_registry.packaging import SteelDefectModel
from steelqc.tasks.data.datasets import build_transforms
from steelqc.tasks.data.imageio import decode_image
from steelqc.tasks.evaluation.explain import gradcam_maps
from steelqc.tasks.model.models import gradcam_target_layer

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class Inspection:
    """What the model decided about one image.

    ``label``: the decision under the calibrated threshold (:func:`~steelqc.tasks.evaluation.metrics.decide`);
    ``critical``: whether it is the critical class; ``critical_probability`` is compared with ``threshold`` (None:
    plain argmax). ``image``: the decoded image (uint8 HxW grey or HxWx3 RGB); ``cam``: the Grad-CAM map of the
    decided class at model-input resolution (float32 in [0, 1]); ``overlay``: the CAM as a heat map over the image
    (uint8 HxWx3 RGB, the image's size).
    """

    label: str
    probabilities: dict[str, float]
    critical: bool
    critical_class: str
    critical_probability: float
    threshold: float | None
    image: np.ndarray
    cam: np.ndarray
    overlay: np.ndarray


def model_input(model: SteelDefectModel, data: bytes) -> tuple[np.ndarray, torch.Tensor]:
    """Decode ``data`` as the model was trained (grey or RGB) and preprocess it as evaluation does: the decoded
    image and a 1 x C x H x W float32 tensor."""
    image = decode_image(io.BytesIO(data), model.spec.image_channels)
    tensor = build_transforms(model.spec, train=False)(image=image)["image"]
    return image, torch.as_tensor(tensor, dtype=torch.float32).unsqueeze(0)


def probabilities(model: SteelDefectModel, batch: torch.Tensor) -> np.ndarray:
    """Softmax probabilities (N x C, output-index order) of a preprocessed batch."""
    net = model.model.eval()
    with torch.inference_mode():
        logits = net(batch.to(model.device))
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The CAM (any size, values in [0, 1]) as a jet heat map blended over ``image`` (uint8 grey or RGB), uint8
    HxWx3 RGB at the image's size."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    height, width = rgb.shape[:2]
    resized = cv2.resize(np.asarray(cam, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(np.clip(resized, 0.0, 1.0) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)


def inspect_image(model: SteelDefectModel, data: bytes) -> Inspection:
    """Decide one image (its file's bytes) with ``model`` and explain the decision with Grad-CAM."""
    image, batch = model_input(model, data)
    proba = probabilities(model, batch)
    chosen = int(model.decide(proba)[0])
    space = model.label_space
    layer = gradcam_target_layer(model.model, model.architecture)
    cam = gradcam_maps(model.model, layer, batch.to(model.device), [chosen])[0]
    return Inspection(
        label=space.names[chosen],
        probabilities={name: float(p) for name, p in zip(space.names, proba[0], strict=True)},
        critical=chosen == space.critical_index,
        critical_class=space.critical_class,
        critical_probability=float(proba[0, space.critical_index]),
        threshold=None if model.threshold is None else float(model.threshold),
        image=image,
        cam=cam,
        overlay=overlay(image, cam),
    )


def folder_images(folder: Path | str, limit: int = 1000) -> list[Path]:
    """The image files directly in ``folder`` (sorted, at most ``limit``); empty when it is not a folder."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return found[:limit]
