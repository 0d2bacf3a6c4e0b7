"""Images from a manifest as model-ready tensors: input spec, transforms, dataset, class balance, loaders.

The photometric augmentation (brightness/contrast/gamma/CLAHE and a soft specular band) together with per-image
standardisation is what makes a model robust to glare: standardising each image to zero mean and unit std removes
a global brightness offset entirely, and the augmentation teaches the model the rest (clipped highlights, bands,
contrast changes). Images are read by content (some real Severstal files are PNG data behind a ``.jpg`` name) with
the data's channels, ``InputSpec.image_channels``: grey data (1, the default, and what a checkpoint or bundle
without the field means) is decoded to one grey channel, augmented as such and replicated to
``InputSpec.channels`` only at the very end; colour data (3, decided by ingest) is decoded, augmented and fed as
RGB. Per-image standardisation of an RGB image is joint (one mean and one std over all its pixels and channels),
so a colour cast that separates two classes survives it, while a global brightness offset is still removed.

Reproducibility: augmentation randomness comes from one numpy and one Python generator shared by all transforms
(:func:`seed_transforms`). Albumentations' own ``Compose(seed=...)`` gives every transform its own generator with
the same seed, which makes e.g. the horizontal and vertical flip decisions identical; it is not used here.
DataLoader workers reseed their copy from the worker's torch seed (:func:`worker_init`), so workers never repeat
each other's augmentations.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from steelqc.tasks.data.cache import CacheKey, ImageCache
from steelqc.tasks.data.imageio import decode_image
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.presets import DEFAULT_AUGMENT, check_augment, light_v2

log = logging.getLogger(__name__)

Corruption = Callable[[np.ndarray, str], np.ndarray]
NORMALIZATIONS = ("per_image", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STD_FLOOR = 0.01
"""Smallest std (on the 0..1 scale) used by per-image standardisation, so a flat image is not blown up to noise."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
MEMORY_CACHE_BYTES = 2 * 1024**3
"""Memory limit of the cache ``ManifestDataset(cache=True)`` makes (the settings' ``cache`` block: the pipeline's)."""
CPU_SMALL_SIDE = 160
"""Long side used on CPU for small images (e.g. NEU-CLS 200x200 -> 160x160)."""
CPU_LARGE_IMAGE = 512
"""Images whose long side exceeds this are halved on CPU (Severstal 256x1600 -> 128x800)."""


# ------------------------------------------------------------------------------------------------ input spec


@dataclass(frozen=True)
class InputSpec:
    """Size and normalisation of model inputs.

    ``channels``: the model's input channels (3 for pretrained weights). ``image_channels``: how the images are
    decoded, 1 = grey (replicated to ``channels`` at the end) or 3 = RGB (needs ``channels`` 3); ingest decides it
    per data set (the manifest's ``channels``), and it travels with the checkpoint's and the bundle's input spec,
    so everything that scores a model decodes as it was trained. ``normalize``: ``"per_image"`` standardises each
    image to zero mean / unit std after augmentation, jointly over the channels of an RGB image (invariant to
    global brightness offsets: the point of the glare gate; a colour cast survives); ``"imagenet"`` uses the
    ImageNet mean/std of each channel (grey replicated gets the three as well).
    """

    height: int = 128
    width: int = 800
    channels: int = 3
    normalize: str = "per_image"
    image_channels: int = 1

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"input size must be at least 8x8, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 (grey) or 3 (RGB), got {self.image_channels}")
        if self.image_channels > self.channels:
            raise ValueError(
                f"RGB images (image_channels 3) need a 3-channel model input, got channels {self.channels}"
            )

    @property
    def square(self) -> bool:
        return self.height == self.width

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """From :meth:`to_dict`; a spec written before ``image_channels`` existed (no such key) is grey."""
        keys = ("height", "width", "channels", "normalize", "image_channels")
        return cls(**{k: data[k] for k in keys if k in data})


def _round_to(value: float, multiple: int = 32) -> int:
    """Nearest positive multiple of ``multiple`` (CNN strides divide it evenly)."""
    return max(multiple, round(value / multiple) * multiple)


def default_input_spec(image_height: int, image_width: int, device: str) -> InputSpec:
    """Aspect-preserving input size for images of the given size on ``device``.

    * GPU (``device`` starts with ``cuda``): native size (Severstal 256x1600, NEU-CLS 200x200).
    * CPU, long side > 512: half size, rounded to a multiple of 32 (Severstal 256x1600 -> 128x800).
    * CPU, smaller images: long side scaled to 160, rounded to a multiple of 32 (NEU-CLS 200x200 -> 160x160).
    """
    if str(device).startswith("cuda"):
        return InputSpec(height=int(image_height), width=int(image_width))
    long_side = max(image_height, image_width)
    scale = 0.5 if long_side > CPU_LARGE_IMAGE else min(1.0, CPU_SMALL_SIDE / long_side)
    return InputSpec(height=_round_to(image_height * scale), width=_round_to(image_width * scale))


def default_num_workers(device: str) -> int:
    """DataLoader worker processes: none on CPU, where the model is the bottleneck (2 cores, 128x800: ~5 images/s
    training against ~170 images/s of decoding + augmentation), all cores but one (at most 8) on CUDA."""
    if not str(device).startswith("cuda"):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1))


# ------------------------------------------------------------------------------------------------ images


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Decode an image file by content (not extension) to a uint8 HxW grey (``channels=1``) or HxWx3 RGB
    (``channels=3``) array.

    The one decoder of :mod:`tasks.imageio` (every mode ingest accepts, 16-bit scaled, never clipped).
    """
    return decode_image(path, channels)


def standardize(img: np.ndarray, floor: float = STD_FLOOR) -> np.ndarray:
    """Per-image standardisation of a uint8 (0..255) or float (0..1) image: zero mean, unit std (float32); one
    mean and one std over every pixel and channel (joint, so the channels of an RGB image keep their differences)."""
    x = img.astype(np.float32)
    if img.dtype == np.uint8:
        x /= 255.0
    mean, std = float(x.mean()), float(x.std())
    return (x - mean) / max(std, floor)


def _as_image(img: np.ndarray) -> np.ndarray:
    """HxW grey or HxWx3 RGB (an HxWx1 from albumentations becomes HxW); anything else raises ValueError."""
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0]
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3):
        return img
    raise ValueError(f"expected an HxW grey or HxWx3 RGB image, got shape {img.shape}")


def to_model_tensor(img: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """Normalise an HxW grey or HxWx3 RGB image as ``spec`` says; a float32 CxHxW tensor (grey replicated to
    ``spec.channels``, RGB as its three channels)."""
    img = _as_image(img)
    colour = img.ndim == 3
    if colour and spec.channels != 3:
        raise ValueError(f"an RGB image needs a 3-channel model input, the spec has {spec.channels}")
    if spec.normalize == "per_image":
        x = standardize(img)
    else:
        x = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))) if colour else torch.from_numpy(x)[None]
    t = t.expand(spec.channels, -1, -1)
    if spec.normalize == "per_image":
        return t.contiguous()
    mean = torch.tensor(IMAGENET_MEAN[: spec.channels] if spec.channels == 3 else (0.449,)).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD[: spec.channels] if spec.channels == 3 else (0.226,)).view(-1, 1, 1)
    return (t - mean) / std


class ToModelTensor(A.ImageOnlyTransform):
    """Final transform: normalisation (per-image or ImageNet) to a float32 CxHxW tensor; an HxW (or HxWx1) grey
    image is replicated to ``channels``, an HxWx3 RGB image keeps its three channels."""

    def __init__(self, height: int, width: int, channels: int = 3, normalize: str = "per_image", p: float = 1.0):
        super().__init__(p=p)
        self.height, self.width, self.channels, self.normalize = height, width, channels, normalize
        self.spec = InputSpec(height=height, width=width, channels=channels, normalize=normalize)

    def apply(self, img: np.ndarray, **params: Any) -> torch.Tensor:
        return to_model_tensor(img, self.spec)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "channels", "normalize")


class SpecularBand(A.ImageOnlyTransform):
    """Add a soft bright band (Gaussian profile across rows or columns) with clipping: simulated glare. On an RGB
    image the same band is added to every channel (white light)."""

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.15, 0.5),
        band_width: tuple[float, float] = (0.03, 0.2),
        p: float = 0.3,
    ):
        super().__init__(p=p)
        self.amplitude, self.band_width = amplitude, band_width

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        vertical = self.py_random.random() < 0.5
        length = width if vertical else height
        return {
            "vertical": vertical,
            "center": self.py_random.uniform(0, length),
            "sigma": max(1.0, self.py_random.uniform(*self.band_width) * length),
            "gain": self.py_random.uniform(*self.amplitude) * 255.0,
        }

    def apply(self, img: np.ndarray, vertical: bool, center: float, sigma: float, gain: float, **params: Any):
        axis = 1 if vertical else 0
        coords = np.arange(img.shape[axis], dtype=np.float32)
        profile = gain * np.exp(-0.5 * ((coords - center) / sigma) ** 2)
        shape = [1] * img.ndim
        shape[axis] = -1
        return np.clip(img.astype(np.float32) + profile.reshape(shape), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("amplitude", "band_width")


def build_transforms(spec: InputSpec, train: bool, *, augment: str = DEFAULT_AUGMENT) -> A.Compose:
    """Resize to the spec, (train) geometric + photometric augmentation, normalise, CxHxW float32 tensor.

    Geometric: horizontal flip always; vertical flip for non-square inputs, RandomRotate90 only for square ones
    (it would turn a 128x800 strip sideways). Photometric: the ``augment`` preset of :mod:`.presets`
    (``glare-v1``: CLAHE, brightness/contrast (-0.35..+0.4 brightness with clipping), gamma and an axis-aligned
    specular band (p=0.5, peak up to +0.6); ``light-v2``: see :func:`.presets.light_v2`).
    """
    check_augment(augment)
    steps: list[A.BasicTransform] = [A.Resize(spec.height, spec.width, interpolation=cv2.INTER_AREA)]
    if train:
        steps.append(A.HorizontalFlip(p=0.5))
        steps.append(A.RandomRotate90(p=0.5) if spec.square else A.VerticalFlip(p=0.5))
    if train and augment == "light-v2":
        steps += light_v2()
    elif train:
        steps += [
            A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=0.3),
            # Plants run under unstable lighting: shifts up to +0.4 with clipping (saturated background) and
            # strong specular bands are common enough to be trained on, not just tolerated.
            A.RandomBrightnessContrast(brightness_limit=(-0.35, 0.4), contrast_limit=0.2, p=0.9),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            SpecularBand(amplitude=(0.2, 0.6), p=0.5),
        ]
    steps.append(ToModelTensor(spec.height, spec.width, spec.channels, spec.normalize))
    return A.Compose(steps)


def seed_transforms(transform: A.Compose, seed: int | Sequence[int]) -> None:
    """Seed a Compose with one numpy and one Python generator shared by all its transforms."""
    seq = list(seed) if isinstance(seed, Sequence) else [int(seed)]
    transform.set_random_state(np.random.default_rng(seq), random.Random("-".join(map(str, seq))))


# ------------------------------------------------------------------------------------------------ dataset


class ManifestDataset(Dataset):
    """Manifest rows as ``(tensor, label_index)``; ``label_index`` is -1 when the frame has no ``label`` column.

    Images are decoded with ``spec.image_channels`` (grey HxW or RGB HxWx3).
    ``corruption(img_uint8, image_id) -> img_uint8`` (same shape) is applied to the decoded image before any
    transform (evaluation uses it for glare variants).

    ``cache``: an :class:`~steelqc.tasks.data.cache.ImageCache` (bounded memory, and on disk across runs), or True
    for a memory-only one of :data:`MEMORY_CACHE_BYTES`. Images are decoded and resized to the spec once (a thread
    pool fills the cache up front), keyed by content hash (the manifest's ``sha256``), size, channels and decoder
    version; augmentation then runs on the cached uint8 image (about 100 KB at 128x800). Without a cache (or with a
    corruption, which is not cached) every access decodes the file again.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        label_space: LabelSpace,
        spec: InputSpec,
        train: bool,
        corruption: Corruption | None = None,
        cache: ImageCache | bool | None = False,
        cache_threads: int = 4,
        seed: int = 0,
        augment: str = DEFAULT_AUGMENT,
    ):
        self.paths = [str(p) for p in frame["path"]]
        self.image_ids = (
            [str(i) for i in frame["image_id"]] if "image_id" in frame else [Path(p).name for p in self.paths]
        )
        self.labels: list[int] = (
            [label_space.index_of(v) for v in frame["label"]] if "label" in frame else [-1] * len(self.paths)
        )
        self.label_space, self.spec, self.train, self.corruption = label_space, spec, train, corruption
        self.transform = build_transforms(spec, train, augment=augment)
        seed_transforms(self.transform, seed)
        self._resize = A.Resize(spec.height, spec.width, interpolation=cv2.INTER_AREA, p=1.0)
        self.cache = ImageCache(None, MEMORY_CACHE_BYTES, 0) if cache is True else cache or None
        if self.cache is not None and corruption is not None:
            log.debug("a corrupted data set is not cached")
            self.cache = None
        hashes = [str(h) for h in frame["sha256"]] if "sha256" in frame else []
        self._sha256 = hashes if hashes and all(_SHA256.fullmatch(h) for h in hashes) else None
        self._keys: list[CacheKey] = []
        if self.cache is not None:
            with ThreadPoolExecutor(max_workers=max(1, cache_threads)) as pool:
                self._keys = list(pool.map(self.cache_key, range(len(self.paths))))
                for _ in pool.map(self._cached, range(len(self.paths))):
                    pass
            log.info("image cache filled for %d images at %dx%d: %s", len(self), spec.height, spec.width,
                     self.cache.stats())  # fmt: skip

    def __len__(self) -> int:
        return len(self.paths)

    def load_raw(self, index: int) -> np.ndarray:
        """The decoded uint8 image (grey or RGB, as ``spec.image_channels``) with the corruption (if any) applied."""
        img = read_image(self.paths[index], self.spec.image_channels)
        if self.corruption is not None:
            img = np.ascontiguousarray(self.corruption(img, self.image_ids[index]), dtype=np.uint8)
        return img

    def _load_resized(self, index: int) -> np.ndarray:
        return self._resize(image=self.load_raw(index))["image"]

    def cache_key(self, index: int) -> CacheKey:
        """The cache key of image ``index``: content hash (the manifest's ``sha256``, else the file's bytes hashed
        here), size, channels."""
        spec, preprocessing = self.spec, ("resize:cv2-area",)
        if self._sha256 is not None:
            sha = self._sha256[index]
            return CacheKey(sha, spec.height, spec.width, spec.image_channels, preprocessing=preprocessing)
        return CacheKey.for_file(self.paths[index], spec.height, spec.width, spec.image_channels, preprocessing)

    def _cached(self, index: int) -> np.ndarray:
        assert self.cache is not None
        return self.cache.get_or_load(self._keys[index], lambda: self._load_resized(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self._cached(index) if self.cache is not None else self.load_raw(index)
        return self.transform(image=img)["image"], self.labels[index]

    def reseed(self, seed: int | Sequence[int]) -> None:
        """Reseed the augmentation generators (per epoch in the main process, per worker in workers)."""
        seed_transforms(self.transform, seed)


def worker_init(worker_id: int) -> None:
    """DataLoader worker start: seed numpy, random and the dataset's augmentation from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed([seed, worker_id])


# ------------------------------------------------------------------------------------------------ class balance


def _counts(label_indices: Sequence[int], num_classes: int) -> np.ndarray:
    labels = np.asarray(label_indices, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"label indices must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes).astype(np.float64)


def class_weights(label_indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present; absent classes get 0."""
    counts = _counts(label_indices, num_classes)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = 1.0 / counts[present]
    if present.any():
        weights[present] /= weights[present].mean()
    return torch.tensor(weights, dtype=torch.float32)


def inverse_frequency_weights(label_indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Per-sample weights (float64) that make each class equally likely: 1 / the sample's class count."""
    counts = _counts(label_indices, num_classes)
    return torch.as_tensor(1.0 / counts[np.asarray(label_indices, dtype=np.int64)], dtype=torch.double)


def make_sampler(label_indices: Sequence[int], num_classes: int, seed: int) -> WeightedRandomSampler:
    """Sample with replacement, each class equally likely (inverse frequency); ``len(labels)`` draws, seeded."""
    weights = inverse_frequency_weights(label_indices, num_classes)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    balanced: bool,
    num_workers: int,
    device: str,
    seed: int,
    drop_last: bool = False,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """A DataLoader: balanced sampler or (train) seeded shuffle; pinned memory on CUDA; persistent workers.

    ``sampler``: one given instead (a data-parallel process's shard, :mod:`steelqc.tasks.data.sharding`)."""
    generator = torch.Generator().manual_seed(int(seed))
    if sampler is None and train and balanced:
        labels = getattr(dataset, "labels", None)
        if labels is None:
            raise ValueError("a balanced loader needs a dataset with a `labels` attribute")
        num_classes = getattr(getattr(dataset, "label_space", None), "num_classes", max(labels) + 1)
        sampler = make_sampler(labels, num_classes, seed)
    workers = max(0, int(num_workers))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=bool(train and sampler is None),
        sampler=sampler,
        num_workers=workers,
        pin_memory=str(device).startswith("cuda"),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=worker_init if workers > 0 else None,
        generator=generator,
        drop_last=drop_last,
    )


def set_loader_epoch(loader: DataLoader, seed: int, epoch: int, rank: int = 0) -> None:
    """Make epoch ``epoch``'s sample order (and, without workers, its augmentation) a function of (seed, epoch).

    So a resumed run draws the same batches as an uninterrupted one. With worker processes the augmentation
    stream is seeded per worker instead (see :func:`worker_init`). ``rank``: a data-parallel process other than
    the first augments from its own stream (its sampler's shard comes from ``set_epoch``).
    """
    epoch_seed = int(seed) * 100_003 + int(epoch)
    for gen in {id(g): g for g in (getattr(loader.sampler, "generator", None), loader.generator) if g}.values():
        gen.manual_seed(epoch_seed)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(int(epoch))
    if loader.num_workers == 0 and hasattr(loader.dataset, "reseed"):
        loader.dataset.reseed([int(seed), int(epoch), *([int(rank)] if rank else [])])
