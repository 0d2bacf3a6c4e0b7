"""Image features for drift monitoring and novelty: the same code computes the training reference and the new side.

Per image:

* photometric features of the grey image at its own size (:data:`PHOTOMETRIC`): mean and spread of brightness,
  contrast (5th-95th percentile range), sharpness (log variance of the Laplacian), the share of saturated pixels
  (a glare signal) and the share of near-black pixels; for colour data they are computed on the luminance of the
  decoded RGB image (the grey a grey decode gives), so they mean the same for grey and colour models;
* the model's view: the penultimate-layer embedding (the input of the final linear layer), projected to at most
  16 whitened components by a :class:`Projection` fitted on the training images; the predicted class under the
  critical threshold, its confidence (max probability) and margin (top-1 minus top-2), the critical probability;
* a novelty score (:class:`Novelty`): how far the image's texture statistics at several depths of the network lie
  from the training classes, with a threshold calibrated on the validation split so that about 1 % of familiar
  images exceed it.

Inference streams the images in batches through a DataLoader: with ``num_workers`` worker processes (see
:func:`feature_workers`) decoding, preprocessing and the photometric features run in parallel with the model's pass
of the previous batch, and at most ``2 x num_workers`` batches wait decoded, so memory does not grow with the
number of images (what is kept is each image's features). A progress bar goes to stderr. An image that cannot be
read gets an ``error`` instead of features; the others go on. The reference is stored as
CSV, JSON and a NumPy ``.npz`` (read with ``allow_pickle=False``): never a pickle.
"""

from __future__ import annotations

import io
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from steelqc.tasks.config import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from steelqc.tasks.data.datasets import Corruption, InputSpec, build_transforms, default_num_workers
from steelqc.tasks.data.imageio import UnsupportedImage, decode_image, luminance, read_regular_file
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.metrics import decide
from steelqc.tasks.memory import trim_heap
from steelqc.tasks.model.inference import autocast_context, available_cpus, to_device
from steelqc.tasks.model.models import head_layer, novelty_layers

log = logging.getLogger(__name__)

PHOTOMETRIC = ("brightness_mean", "brightness_std", "contrast", "sharpness", "saturated_share", "dark_share")
MODEL_VIEW = ("confidence", "margin")
SATURATED_LEVEL = 250
"""Grey level (of 255) from which a pixel counts as saturated (glare)."""
DARK_LEVEL = 5
"""Grey level up to which a pixel counts as near-black."""
MAX_COMPONENTS = 16
TRIM_EVERY = 8  # batches between two trim_heap calls in extract
REFERENCE_FORMAT = "steelqc-reference/1"
REFERENCE_FILES = ("reference.json", "features.csv", "arrays.npz")


def embedding_columns(k: int) -> list[str]:
    return [f"emb_{i:02d}" for i in range(k)]


# ------------------------------------------------------------------------------------------- photometric


def photometric_features(img: np.ndarray) -> np.ndarray:
    """:data:`PHOTOMETRIC` of a uint8 grey image (float32; brightness and contrast on the 0..1 scale)."""
    if img.dtype != np.uint8 or img.ndim != 2 or img.size == 0:
        raise ValueError(f"expected a non-empty uint8 grey image, got {img.dtype} {img.shape}")
    hist = np.bincount(img.ravel(), minlength=256).astype(np.float64)
    n = float(img.size)
    levels = np.arange(256, dtype=np.float64)
    mean = float(hist @ levels) / n
    std = math.sqrt(float(hist @ (levels - mean) ** 2) / n)
    cdf = np.cumsum(hist) / n
    p05, p95 = int(np.searchsorted(cdf, 0.05)), int(np.searchsorted(cdf, 0.95))
    laplacian = cv2.Laplacian(img, cv2.CV_32F)
    return np.array(
        [
            mean / 255.0,
            std / 255.0,
            (p95 - p05) / 255.0,
            math.log1p(float(laplacian.var())),
            float(hist[SATURATED_LEVEL:].sum()) / n,
            float(hist[: DARK_LEVEL + 1].sum()) / n,
        ],
        dtype=np.float32,
    )


# ------------------------------------------------------------------------------------------- extraction


def feature_workers(requested: int | None, device: str, cpus: int | None = None) -> int:
    """DataLoader worker processes for :func:`extract`: ``requested`` when set; else on CUDA all cores but one (at
    most 8, as training: :func:`~steelqc.tasks.data.datasets.default_num_workers`), and on the CPU one when there
    are two cores or more (decoding a 256x1600 image and its photometric features take about as long as the
    model's pass there, so one worker overlaps them; more would take the model's cores)."""
    if requested is not None:
        return max(0, int(requested))
    if str(device).startswith("cuda"):
        return default_num_workers(device)
    cpus = cpus if cpus is not None else available_cpus()
    return 1 if cpus >= 2 else 0


class FeatureDataset(Dataset):
    """Images as ``(model tensor, photometric features, error)``; an unreadable image gives zeros, NaNs and the
    reason instead of raising, so one bad file never stops a batch. Images are decoded once, with the spec's
    ``image_channels`` (as the model was trained); the photometric features take the luminance of an RGB image."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        spec: InputSpec,
        corruption: Corruption | None = None,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        self.paths = [str(p) for p in paths]
        self.spec, self.corruption, self.max_bytes, self.max_pixels = spec, corruption, max_bytes, max_pixels
        self.transform = build_transforms(spec, train=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray, str]:
        path = self.paths[index]
        try:
            data = read_regular_file(path, self.max_bytes)
            if len(data) > self.max_bytes:
                raise UnsupportedImage(f"more than max_image_bytes ({self.max_bytes}) bytes: refused unread")
            img = decode_image(io.BytesIO(data), self.spec.image_channels, self.max_pixels)
            if self.corruption is not None:
                img = np.ascontiguousarray(self.corruption(img, Path(path).name), dtype=np.uint8)
            return self.transform(image=img)["image"], photometric_features(luminance(img)), ""
        except Exception as exc:  # unreadable, truncated, special file, unsupported mode...
            blank = torch.zeros(self.spec.channels, self.spec.height, self.spec.width)
            return blank, np.full(len(PHOTOMETRIC), np.nan, dtype=np.float32), f"{type(exc).__name__}: {exc}"


@dataclass
class RawFeatures:
    """Features of a list of images, in order: photometric (N x 6), embedding (N x D), probabilities (N x C),
    the channel means and standard deviations of the :func:`novelty_layers` (one N x 2C_l array a layer);
    ``errors[i]`` is empty for a usable image."""

    paths: list[str]
    photometric: np.ndarray
    embedding: np.ndarray
    proba: np.ndarray
    errors: list[str]
    layers: list[np.ndarray] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        return np.array([not e for e in self.errors], dtype=bool)

    def subset(self, mask: np.ndarray) -> RawFeatures:
        keep = np.flatnonzero(mask)
        return RawFeatures(
            [self.paths[i] for i in keep],
            self.photometric[keep],
            self.embedding[keep],
            self.proba[keep],
            [self.errors[i] for i in keep],
            [layer[keep] for layer in self.layers],
        )


@torch.inference_mode()
def extract(
    model: nn.Module,
    architecture: str,
    spec: InputSpec,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    device: str = "cpu",
    corruption: Corruption | None = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> RawFeatures:
    """Photometric features, embeddings and probabilities of ``paths`` in one pass of the model.

    CUDA: autocast (fp16), channels-last, pinned memory; CPU: channels-last. Unreadable images get an error.
    ``num_workers``: processes decoding ahead of the model (:func:`feature_workers`); the features are the same.
    An image file over ``max_bytes`` bytes or ``max_pixels`` pixels gets an error instead of being decoded.
    """
    cuda = str(device).startswith("cuda")
    model.to(device, memory_format=torch.channels_last).eval()
    captured: list[torch.Tensor] = []
    blocks = novelty_layers(model, architecture)
    pooled: list[list[torch.Tensor]] = [[] for _ in blocks]
    hooks = [
        head_layer(model, architecture).register_forward_pre_hook(
            lambda _module, args: captured.append(args[0].detach().float().cpu())
        )
    ]
    for block, store in zip(blocks, pooled, strict=True):
        hooks.append(block.register_forward_hook(lambda _m, _args, out, store=store: store.append(_pool(out))))
    dataset = FeatureDataset(paths, spec, corruption, max_bytes, max_pixels)
    workers = max(0, int(num_workers))
    # No cv2.setNumThreads in the workers: in a child forked after OpenCV's thread pool ran (the training flow's
    # evaluation), it blocks for ever; OpenCV's own calls work there.
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, pin_memory=cuda, prefetch_factor=2 if workers else None
    )
    photometric, proba, errors = [], [], []
    try:
        with tqdm(total=len(dataset), desc=desc, unit="img", file=sys.stderr, disable=not progress) as bar:
            for images, feats, errs in loader:
                with autocast_context(device, cuda):
                    logits = model(to_device(images, device, channels_last=True))
                proba.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
                photometric.append(np.asarray(feats, dtype=np.float32))
                errors += list(errs)
                bar.update(len(errs))
                if len(proba) % TRIM_EVERY == 0:
                    trim_heap()  # the freed batch buffers, else resident memory grows with the images
    finally:
        for hook in hooks:
            hook.remove()
    n_classes = proba[0].shape[1] if proba else 0
    return RawFeatures(
        [str(p) for p in paths],
        np.concatenate(photometric) if photometric else np.zeros((0, len(PHOTOMETRIC)), np.float32),
        torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32),
        np.concatenate(proba) if proba else np.zeros((0, n_classes), np.float32),
        errors,
        [torch.cat(store).numpy() for store in pooled] if captured else [],
    )


def _pool(out: torch.Tensor) -> torch.Tensor:
    """Channel means and standard deviations of a feature map (N x 2C, float32 on the CPU): the texture
    statistics of the layer."""
    out = out.detach().float()
    return torch.cat([out.mean(dim=(2, 3)), out.std(dim=(2, 3))], dim=1).cpu()


# ------------------------------------------------------------------------------------------- projection


@dataclass
class Projection:
    """PCA of training embeddings to ``k`` whitened components (unit variance on the training images)."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, embedding: np.ndarray, k: int = MAX_COMPONENTS) -> Projection:
        x = np.asarray(embedding, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"a projection needs at least 2 embeddings, got shape {x.shape}")
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = max(1, min(k, len(x) - 1, x.shape[1]))
        scale = s[:k] / math.sqrt(len(x) - 1)
        return cls(mean.astype(np.float32), vt[:k].astype(np.float32), np.maximum(scale, 1e-6).astype(np.float32))

    def transform(self, embedding: np.ndarray) -> np.ndarray:
        return ((np.asarray(embedding, np.float32) - self.mean) @ self.components.T) / self.scale


# ------------------------------------------------------------------------------------------- novelty


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class LayerGaussian:
    """Class means and one shared (tied) within-class covariance of a layer's L2-normalised pooled features,
    shrunk towards a scaled identity by the Ledoit-Wolf factor (estimated from the data: no constant to tune, and
    a layer may have more dimensions than a training set has images). Stored whitened: ``whitener`` W (float16)
    with W Wᵀ = the inverse covariance, ``means`` already multiplied by W."""

    means: np.ndarray
    whitener: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> LayerGaussian:
        x = _l2_normalise(x)
        classes = [c for c in dict.fromkeys(y.tolist()) if (y == c).sum() >= 2]
        if not classes:
            raise ValueError("the novelty score needs at least two training images of one class")
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
        means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = x - means[np.array([classes.index(c) for c in y.tolist()])]
        eigval, eigvec = np.linalg.eigh(LedoitWolf(assume_centered=True).fit(centred).covariance_)
        # float16 halves the stored reference (MobileNetV2's last conv: 2560 x 2560); calibration and scoring both
        # use the rounded matrix, so the threshold fits what is stored
        whitener = (eigvec / np.sqrt(np.maximum(eigval, 1e-12))).astype(np.float16)
        return cls((means @ whitener.astype(np.float64)).astype(np.float32), whitener)

    def distance(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        """Mahalanobis distance of each row to the nearest class mean."""
        x, whitener, means = _l2_normalise(x), self.whitener.astype(np.float64), self.means.astype(np.float64)
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), batch):
            z = x[start : start + batch] @ whitener
            out[start : start + batch] = np.sqrt(np.stack([((z - m) ** 2).sum(axis=1) for m in means], 1).min(1))
        return out


@dataclass
class Novelty:
    """How unfamiliar an image is to the model: per :func:`novelty_layers` layer, the Mahalanobis distance of its
    texture statistics (channel means and standard deviations) to the nearest training class (:class:`LayerGaussian`);
    each layer's distance is standardised by its mean and spread on the validation images, and the score is their
    sum. An unseen defect type that the last layer (trained on the known classes) maps onto a known class often
    stands out in an earlier layer, and the reverse. ``threshold`` is the ``quantile`` of the validation images'
    scores, so that about 1 - quantile of familiar images exceed it (None until calibrated)."""

    layers: list[LayerGaussian]
    centre: np.ndarray | None = None
    scale: np.ndarray | None = None
    threshold: float | None = None
    quantile: float | None = None

    @classmethod
    def fit(cls, layers: list[np.ndarray], labels: Sequence[Any] | np.ndarray) -> Novelty:
        """One :class:`LayerGaussian` a layer, from the training images' pooled features and class labels."""
        y = np.asarray(labels)
        if any(len(x) != len(y) for x in layers):
            raise ValueError(f"novelty: {len(y)} labels for {[len(x) for x in layers]} images")
        return cls([LayerGaussian.fit(x, y) for x in layers])

    def distances(self, layers: list[np.ndarray]) -> np.ndarray:
        """N x L Mahalanobis distances, one column a layer."""
        return np.stack([g.distance(x) for g, x in zip(self.layers, layers, strict=True)], axis=1)

    def score(self, layers: list[np.ndarray]) -> np.ndarray:
        """Novelty scores (N,), higher = stranger (the raw distances summed until calibrated)."""
        d = self.distances(layers)
        if self.centre is not None and self.scale is not None:
            d = (d - self.centre) / self.scale
        return d.sum(axis=1).astype(np.float32)

    def calibrate(self, layers: list[np.ndarray], quantile: float) -> float:
        """Standardise each layer on these familiar held-out images and set the threshold to the ``quantile`` of
        their scores."""
        d = self.distances(layers)
        if len(d) < 2:
            raise ValueError(f"cannot calibrate the novelty threshold on {len(d)} images")
        self.centre, self.scale = d.mean(axis=0), np.maximum(d.std(axis=0), 1e-9)
        self.threshold, self.quantile = float(np.quantile(self.score(layers), quantile)), float(quantile)
        return self.threshold

    def is_novel(self, scores: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            return np.zeros(len(scores), dtype=bool)
        return np.asarray(scores) > self.threshold

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to store (``arrays.npz``)."""
        out = {f"novelty_means_{i}": g.means for i, g in enumerate(self.layers)}
        out |= {f"novelty_whitener_{i}": g.whitener for i, g in enumerate(self.layers)}
        if self.centre is not None and self.scale is not None:
            out |= {"novelty_centre": self.centre, "novelty_scale": self.scale}
        return out

    @classmethod
    def from_arrays(cls, arrays: Any, n_layers: int, threshold: float | None, quantile: float | None) -> Novelty:
        layers = [LayerGaussian(arrays[f"novelty_means_{i}"], arrays[f"novelty_whitener_{i}"]) for i in range(n_layers)]
        calibrated = "novelty_centre" in arrays.files
        centre = arrays["novelty_centre"] if calibrated else None
        scale = arrays["novelty_scale"] if calibrated else None
        return cls(layers, centre, scale, threshold, quantile)


# ------------------------------------------------------------------------------------------- frames


def features_frame(
    raw: RawFeatures,
    projection: Projection,
    novelty: Novelty | None,
    label_space: LabelSpace,
    threshold: float | None,
) -> pd.DataFrame:
    """One row per usable image: ``path``, photometric, ``emb_*``, ``predicted``, ``confidence``, ``margin``,
    ``critical_proba``, ``novelty``, ``novel`` (rows with an error are left out: the caller quarantines them)."""
    good = raw.subset(raw.ok)
    frame = pd.DataFrame(good.photometric, columns=list(PHOTOMETRIC))
    frame.insert(0, "path", good.paths)
    if len(good.paths):
        emb = pd.DataFrame(projection.transform(good.embedding), columns=embedding_columns(projection.k))
        top2 = -np.sort(-good.proba, axis=1)[:, :2]
        chosen = decide(good.proba, label_space.critical_index, threshold)
        scores = novelty.score(good.layers) if novelty is not None else np.full(len(good.paths), np.nan)
        frame = pd.concat([frame, emb], axis=1)
        frame["predicted"] = [label_space.names[i] for i in chosen]
        frame["confidence"] = top2[:, 0]
        frame["margin"] = top2[:, 0] - (top2[:, 1] if good.proba.shape[1] > 1 else 0.0)
        frame["critical_proba"] = good.proba[:, label_space.critical_index]
        frame["novelty"] = scores
        frame["novel"] = novelty.is_novel(scores) if novelty is not None else False
    else:
        for col in [*embedding_columns(projection.k), "predicted", *MODEL_VIEW, "critical_proba", "novelty"]:
            frame[col] = pd.Series(dtype=float)
        frame["novel"] = pd.Series(dtype=bool)
    return frame


# ------------------------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """What a monitor compares new images with: the training images' features (``frame``, with ``split`` =
    ``train`` or ``val``), the projection and the novelty score fitted on them, and ``meta``."""

    frame: pd.DataFrame
    projection: Projection
    novelty: Novelty
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self, split: str | None = "train") -> pd.DataFrame:
        """The reference rows of one split (all rows when None)."""
        return self.frame if split is None else self.frame[self.frame["split"] == split].reset_index(drop=True)

    def save(self, folder: Path) -> list[Path]:
        """``reference.json``, ``features.csv`` and ``arrays.npz`` in ``folder`` (no pickle)."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "projection_mean": self.projection.mean,
            "projection_components": self.projection.components,
            "projection_scale": self.projection.scale,
            **self.novelty.arrays(),
        }
        np.savez_compressed(folder / "arrays.npz", **arrays)
        self.frame.to_csv(folder / "features.csv", index=False)
        meta = {
            **self.meta,
            "format": REFERENCE_FORMAT,
            "photometric": list(PHOTOMETRIC),
            "components": self.projection.k,
            "novelty": {
                "method": "mahalanobis-tied-multilayer",
                "layers": len(self.novelty.layers),
                "threshold": self.novelty.threshold,
                "quantile": self.novelty.quantile,
            },
        }
        (folder / "reference.json").write_text(json.dumps(meta, indent=2, default=str))
        return [folder / name for name in REFERENCE_FILES]

    @classmethod
    def load(cls, folder: Path) -> Reference:
        """Read a saved reference (``allow_pickle=False``); a missing or foreign file raises ``ValueError``."""
        missing = [name for name in REFERENCE_FILES if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"{folder} is not a steelqc drift reference: missing {', '.join(missing)}")
        meta = json.loads((folder / "reference.json").read_text())
        if meta.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"{folder}/reference.json: format {meta.get('format')!r}, expected {REFERENCE_FORMAT!r}")
        with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
            projection = Projection(
                arrays["projection_mean"], arrays["projection_components"], arrays["projection_scale"]
            )
            nov = meta["novelty"]
            novelty = Novelty.from_arrays(arrays, int(nov["layers"]), nov.get("threshold"), nov.get("quantile"))
        frame = pd.read_csv(folder / "features.csv")
        return cls(frame, projection, novelty, meta)


def build_reference(
    model: nn.Module,
    architecture: str,
    spec: InputSpec,
    label_space: LabelSpace,
    threshold: float | None,
    train: pd.DataFrame,
    val: pd.DataFrame,
    *,
    quantile: float = 0.99,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
    num_workers: int | None = None,
) -> Reference:
    """The drift and novelty reference of a trained model: features of its training and validation images, the
    projection and the novelty score fitted on the training images, the novelty threshold on the validation ones.

    ``train``/``val`` are split frames (``path``, ``label``). Unreadable images are left out and counted.
    ``num_workers``: decoding processes (None: :func:`feature_workers` for the device, as the monitor).
    """
    workers = feature_workers(num_workers, device)
    kwargs = {"batch_size": batch_size, "device": device, "progress": progress, "num_workers": workers}
    raw_train = extract(model, architecture, spec, train["path"].tolist(), desc="reference (train)", **kwargs)
    raw_val = extract(model, architecture, spec, val["path"].tolist(), desc="reference (val)", **kwargs)
    good_train = raw_train.subset(raw_train.ok)
    projection = Projection.fit(good_train.embedding)
    novelty = Novelty.fit(good_train.layers, train["label"].to_numpy()[raw_train.ok])
    good_val = raw_val.subset(raw_val.ok)
    if len(good_val.paths):
        novelty.calibrate(good_val.layers, quantile)
    frames = []
    for split, raw, source in (("train", raw_train, train), ("val", raw_val, val)):
        part = features_frame(raw, projection, novelty, label_space, threshold)
        labels = dict(zip(source["path"].astype(str), source["label"], strict=False)) if "label" in source else {}
        part.insert(1, "split", split)
        part.insert(2, "label", [labels.get(p) for p in part["path"]])
        frames.append(part)
    meta = {
        "architecture": architecture,
        "input_spec": spec.to_dict(),
        "label_space": label_space.to_dict(),
        "critical_threshold": threshold,
        "n_train": int(raw_train.ok.sum()),
        "n_val": int(raw_val.ok.sum()),
        "unreadable": int((~raw_train.ok).sum() + (~raw_val.ok).sum()),
    }
    return Reference(pd.concat(frames, ignore_index=True), projection, novelty, meta)
