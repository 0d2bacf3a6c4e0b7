"""Training, checkpoints and resume (framework-free: the flows add MLflow via ``on_epoch``); loading and
prediction live in :mod:`steelqc.tasks.model.inference`.

One epoch: AdamW (learning rate from :func:`lr_at`), cross-entropy (optionally class-weighted and label-smoothed)
and/or a class-balanced sampler, mixed precision (``torch.autocast`` + ``GradScaler`` in float16 on CUDA; bfloat16
autocast on CPUs with native bf16, see :func:`~steelqc.tasks.model.inference.cpu_supports_bf16`), channels-last
memory (on CUDA and, measured faster there too with oneDNN, on the CPU: MobileNetV2 128x800 training +30 %,
inference +50 %), optionally an exponential moving average of the weights (``ema_decay``: the average is what is
validated and kept), then validation (unweighted cross-entropy, macro-F1 over the classes present in validation,
accuracy). After every epoch ``checkpoints/last.pt`` (everything needed to resume) and, when validation improved
(higher macro-F1, or equal macro-F1 and lower loss), ``checkpoints/best.pt`` (weights and what is needed to rebuild
the model) are written atomically. Both load with ``torch.load(path, weights_only=True)``. Torch's threads are set
to the CPUs this process may use (``threads``; see :func:`~steelqc.tasks.model.inference.available_cpus`).

Reproducibility: the sample order, the augmentation (without worker processes) and torch's RNG are re-seeded from
``(seed, epoch)`` at the start of every epoch, so a run resumed from ``last.pt`` continues exactly as the
uninterrupted run would have (on the same device and thread count). With ``num_workers > 0`` each worker seeds
its augmentation from its torch seed, which is reproducible for a fresh run but not across a resume.

The cosine schedule is a closed form of the epoch and ``cfg.epochs``; resuming with more epochs stretches the
remaining schedule over the new horizon.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn
from tqdm.auto import tqdm

from steelqc.tasks.config import DEFAULT_SEED, SEVERSTAL_SHAPE, TINY_PROFILE, Settings, TrainDefaults, load_settings
from steelqc.tasks.data.cache import ImageCache
from steelqc.tasks.data.datasets import (
    InputSpec,
    ManifestDataset,
    class_weights,
    default_input_spec,
    default_num_workers,
    make_loader,
    set_loader_epoch,
)
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.presets import check_augment
from steelqc.tasks.data.sharding import shard_sampler
from steelqc.tasks.fileio import atomic_write
from steelqc.tasks.model.distill import (
    DistillationError,
    DistillationLoss,
    Teacher,
    check_teacher,
    prepare_teacher,
    teacher_logits,
)
from steelqc.tasks.model.inference import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    autocast_context,
    cpu_supports_bf16,
    infer_logits,
    read_checkpoint,
    select_device,
    set_torch_threads,
    to_device,
)
from steelqc.tasks.model.models import MODEL_NAMES, build_model, set_train_mode
from steelqc.tasks.model.parallel import BACKENDS, DistContext, barrier, broadcast_flag, sum_over_ranks, wrap

log = logging.getLogger(__name__)

SCHEDULERS = ("cosine", "none")
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class ResumeError(ValueError):
    """``last.pt`` belongs to a different configuration, label space or data set."""


# ------------------------------------------------------------------------------------------------ config


_DEFAULTS = TrainDefaults()  # the one source of the training defaults (settings: STEELQC_TRAIN__*)


@dataclass
class TrainConfig:
    """Training settings. ``fingerprint()`` covers those that change the training trajectory (not ``epochs``,
    ``patience``, workers, caching, device or AMP settings), so a run may be resumed with more epochs.

    Defaults are the settings' :class:`~steelqc.tasks.config.TrainDefaults` (``seed`` and ``weights_fallback``
    the settings' own); :func:`resolve_config` builds one from the settings actually in force. ``height``/
    ``width``/``num_workers`` None are chosen for the device (the input size for a Severstal image).

    ``amp`` applies on CUDA only; ``channels_last`` on every device. ``patience`` <= 0 turns early stopping off.
    ``max_train_batches`` caps the batches of an epoch (tests, smoke runs). ``height``/``width``/``channels``/
    ``normalize``/``image_channels`` are the :class:`InputSpec` (see :attr:`input_spec`; ``image_channels``, grey 1
    or RGB 3, comes from the data's manifest); ``device``: auto, cpu or cuda.
    """

    model: str = _DEFAULTS.model
    epochs: int = _DEFAULTS.epochs
    batch_size: int = _DEFAULTS.batch_size
    lr: float = _DEFAULTS.lr
    weight_decay: float = _DEFAULTS.weight_decay
    scheduler: str = _DEFAULTS.scheduler
    patience: int = _DEFAULTS.patience
    balanced_sampler: bool = _DEFAULTS.balanced_sampler
    weighted_loss: bool = _DEFAULTS.weighted_loss
    freeze_stages: int = _DEFAULTS.freeze_stages
    weights: str = _DEFAULTS.weights
    weights_fallback: str = Settings.model_fields["weights_fallback"].default
    num_workers: int | None = _DEFAULTS.num_workers
    seed: int = DEFAULT_SEED
    amp: bool = _DEFAULTS.amp
    amp_dtype: str = "float16"
    channels_last: bool = True
    max_train_batches: int | None = None
    threads: int | None = _DEFAULTS.threads
    cache_images: bool = _DEFAULTS.cache_images
    augment: str = _DEFAULTS.augment
    label_smoothing: float = _DEFAULTS.label_smoothing
    ema_decay: float = _DEFAULTS.ema_decay
    distill_from: str | None = None
    distill_temperature: float = _DEFAULTS.distill_temperature
    distill_alpha: float = _DEFAULTS.distill_alpha
    height: int | None = _DEFAULTS.height
    width: int | None = _DEFAULTS.width
    channels: int = 3
    normalize: str = "per_image"
    image_channels: int = 1
    device: str = "auto"
    processes: int = _DEFAULTS.processes
    ddp_backend: str = _DEFAULTS.ddp_backend

    FINGERPRINT_FIELDS: ClassVar[tuple[str, ...]] = (
        "model",
        "batch_size",
        "lr",
        "weight_decay",
        "scheduler",
        "balanced_sampler",
        "weighted_loss",
        "freeze_stages",
        "weights",
        "seed",
        "max_train_batches",
        "augment",
        "label_smoothing",
        "ema_decay",
        "height",
        "width",
        "channels",
        "normalize",
        "image_channels",
    )
    DISTILL_FIELDS: ClassVar[tuple[str, ...]] = ("distill_from", "distill_temperature", "distill_alpha")
    PARALLEL_FIELDS: ClassVar[tuple[str, ...]] = ("processes",)  # the global batch is batch_size x processes

    def __post_init__(self) -> None:
        if self.height is None or self.width is None or self.num_workers is None:
            device = select_device(self.device)
            spec = default_input_spec(*SEVERSTAL_SHAPE, device)
            self.height = spec.height if self.height is None else self.height
            self.width = spec.width if self.width is None else self.width
            self.num_workers = default_num_workers(device) if self.num_workers is None else self.num_workers
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {tuple(AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.max_train_batches is not None and self.max_train_batches < 1:
            raise ValueError("max_train_batches must be None or >= 1")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("label_smoothing and ema_decay must lie in [0, 1)")
        if self.distill_temperature <= 0 or not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError("distill_temperature must be > 0 and distill_alpha in [0, 1]")
        if self.distill_from is not None and not self.distill_from.strip():
            raise ValueError("distill_from is blank: name the teacher's model URI, or leave it unset")
        if self.processes < 1 or self.ddp_backend not in BACKENDS:
            raise ValueError(f"processes must be >= 1 and ddp_backend one of {BACKENDS}")
        if self.processes > 1 and self.distill_from:
            raise ValueError("distillation runs in one process: set processes to 1 with distill_from")
        check_augment(self.augment)
        _ = self.input_spec  # raises ValueError on bad input fields

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(
            height=self.height,
            width=self.width,
            channels=self.channels,
            normalize=self.normalize,
            image_channels=self.image_channels,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for MLflow params and checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from other versions) are ignored with a warning."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            log.warning("ignoring unknown training settings %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in names})

    def fingerprint_dict(self) -> dict[str, Any]:
        """The trajectory settings; the distillation ones only when distilling and the process count only above
        one (other runs keep their hash)."""
        names = self.FINGERPRINT_FIELDS + (self.DISTILL_FIELDS if self.distill_from else ())
        names += self.PARALLEL_FIELDS if self.processes > 1 else ()
        return {k: getattr(self, k) for k in names}

    def fingerprint(self) -> str:
        """Stable hash of the settings that matter for resuming."""
        return hashlib.sha256(json.dumps(self.fingerprint_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_val_macro_f1: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]]
    weights_used: str
    seconds: float
    device: str
    resumed_from_epoch: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    distributed: dict[str, Any] | None = None  # processes > 1: world size, backend, torchrun command, ranks

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(best_checkpoint=str(self.best_checkpoint), last_checkpoint=str(self.last_checkpoint))
        return data

    SUMMARY_FIELDS: ClassVar[tuple[str, ...]] = (
        "best_checkpoint",
        "best_epoch",
        "best_val_macro_f1",
        "epochs_run",
        "stopped_early",
        "weights_used",
        "seconds",
        "device",
        "teacher",
        "distributed",
    )

    def summary(self) -> dict[str, Any]:
        """The figures a run reports (the ``train`` of `steelqc train --json`): no history, no config."""
        data = self.to_dict()
        return {k: data[k] for k in self.SUMMARY_FIELDS}


def resolve_config(
    settings: Settings, overrides: dict[str, Any], profile: str = "default", image_shape: tuple[int, int] | None = None
) -> TrainConfig:
    """TrainConfig from the settings' defaults, a profile and explicit overrides (None values ignored).

    An input size left unset is chosen for the device from the data's image size (aspect-preserving).
    """
    values = settings.train.model_dump()
    if profile == "tiny":
        values.update(TINY_PROFILE)
    elif profile != "default":
        raise ValueError(f"unknown profile {profile!r} (default or tiny)")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("height") is None or values.get("width") is None:
        height, width = image_shape or settings.image_shape
        spec = default_input_spec(height, width, select_device())
        values["height"], values["width"] = spec.height, spec.width
    values["seed"] = settings.seed
    values["weights_fallback"] = settings.weights_fallback
    return TrainConfig.from_dict(values)


# ------------------------------------------------------------------------------------------------ helpers


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) ``epoch``: constant, or cosine from ``lr`` towards 0 over ``cfg.epochs``."""
    if cfg.scheduler == "none" or cfg.epochs <= 1:
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch, cfg.epochs) / cfg.epochs))


def _use_amp(cfg: TrainConfig, device: str) -> bool:
    """AMP on CUDA (``cfg.amp_dtype``), bfloat16 autocast on CPUs that compute it natively."""
    return bool(cfg.amp) and (device.startswith("cuda") or cpu_supports_bf16())


def _ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """``AveragedModel`` update: EMA with warm-up (``min(decay, (1 + n) / (10 + n))``, so the average does not
    stay anchored to the starting weights on short runs); integer buffers (BN batch counts) are copied."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def _better(metrics: dict[str, float], best_f1: float, best_loss: float) -> bool:
    """A higher validation macro-F1, or the same with a lower validation loss (macro-F1 saturates on easy
    validation sets; without the tie-break the first epoch to reach it would be kept, however under-trained)."""
    f1, loss = metrics["val_macro_f1"], metrics["val_loss"]
    return f1 > best_f1 + 1e-9 or (abs(f1 - best_f1) <= 1e-9 and loss < best_loss)


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: str,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.float16,
    channels_last: bool = False,
    teacher: tuple[nn.Module, tuple[int, int]] | None = None,
) -> torch.Tensor:
    """One forward/backward/optimizer step; returns the (detached, on-device) batch loss.

    ``teacher``: a frozen teacher and its input ``(height, width)``; ``criterion`` is then a
    :class:`~steelqc.tasks.model.distill.DistillationLoss` and also gets the teacher's logits for the same batch.
    """
    images = to_device(images, device, channels_last)
    targets = targets.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(device, amp, amp_dtype):
        logits = model(images)
        soft_targets = teacher_logits(teacher[0], images, teacher[1]) if teacher is not None else None
    if soft_targets is None:
        loss = criterion(logits.float(), targets)
    else:
        loss = criterion(logits.float(), targets, soft_targets)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes present in ``y_true``."""
    labels = sorted(set(np.asarray(y_true).tolist()))
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain types (``weights_only``-loadable)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (CUDA states only when the same number of GPUs is present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npd = state["numpy"]
    key = npd["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, npd["pos"], npd["has_gauss"], npd["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def data_digest(train_df: pd.DataFrame, val_df: pd.DataFrame) -> str:
    """Hash of which images (content hash or path) with which labels are in train and validation."""
    digest = hashlib.sha256()
    for name, frame in (("train", train_df), ("val", val_df)):
        key = frame["sha256"] if "sha256" in frame else frame["path"]
        for item, label in sorted(zip(key.astype(str), frame["label"].astype(int), strict=True)):
            digest.update(f"{name}\t{item}\t{label}\n".encode())
    return digest.hexdigest()[:16]


def _check_resume(state: dict[str, Any], cfg: TrainConfig, label_space: LabelSpace, digest: str) -> None:
    saved = TrainConfig.from_dict(state["cfg"])
    problems = [
        f"{k}: checkpoint {getattr(saved, k)!r}, now {getattr(cfg, k)!r}"
        for k in cfg.FINGERPRINT_FIELDS
        if getattr(saved, k) != getattr(cfg, k)
    ]
    if state.get("fingerprint") != cfg.fingerprint() and not problems:
        problems.append(f"fingerprint {state.get('fingerprint')} != {cfg.fingerprint()}")
    if state["label_space"] != label_space.to_dict():
        problems.append(f"label space: checkpoint {state['label_space']}, now {label_space.to_dict()}")
    if state.get("data_digest") != digest:
        problems.append("the train/validation images or labels differ from the checkpoint's")
    if saved.distill_from != cfg.distill_from:
        problems.append(f"distill_from: checkpoint {saved.distill_from!r}, now {cfg.distill_from!r}")
    if saved.processes != cfg.processes:
        problems.append(f"processes: checkpoint {saved.processes}, now {cfg.processes} (the global batch differs)")
    if problems:
        raise ResumeError("cannot resume from a run with other settings: " + "; ".join(problems))


def _metadata(cfg: TrainConfig, label_space: LabelSpace, weights_used: str) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": cfg.model,
        "num_classes": label_space.num_classes,
        "label_space": label_space.to_dict(),
        "input_spec": cfg.input_spec.to_dict(),
        "cfg": cfg.to_dict(),
        "fingerprint": cfg.fingerprint(),
        "weights_used": weights_used,
        "torch_version": str(torch.__version__),
    }


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone() for k, v in model.state_dict().items()
    }


def _result(state: dict[str, Any], ckpt_dir: Path, seconds: float, device: str, resumed_from: int) -> TrainResult:
    return TrainResult(
        best_checkpoint=ckpt_dir / "best.pt",
        last_checkpoint=ckpt_dir / "last.pt",
        best_epoch=int(state["best_epoch"]),
        best_val_macro_f1=float(state["best_val_macro_f1"]),
        epochs_run=int(state["epoch"]),
        stopped_early=bool(state["stopped_early"]),
        history=list(state["history"]),
        weights_used=str(state["weights_used"]),
        seconds=round(seconds, 3),
        device=device,
        resumed_from_epoch=resumed_from,
        config=dict(state["cfg"]),
        teacher=state["cfg"].get("distill_from"),
    )


# ------------------------------------------------------------------------------------------------ training


def _train_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: str,
    cfg: TrainConfig,
    desc: str,
    progress: bool,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    teacher: tuple[nn.Module, tuple[int, int]] | None = None,
) -> tuple[float, int]:
    """One pass over (at most ``max_train_batches`` of) the loader; mean loss and images seen."""
    set_train_mode(model)
    amp, dtype, cl = _use_amp(cfg, device), AMP_DTYPES[cfg.amp_dtype], cfg.channels_last
    n_batches = len(loader) if cfg.max_train_batches is None else min(len(loader), cfg.max_train_batches)
    total = torch.zeros((), device=device)
    seen = 0
    bar_off = None if progress else True  # None: tqdm shows the bar only on a terminal
    with tqdm(total=n_batches, desc=desc, unit="batch", file=sys.stderr, disable=bar_off, leave=False) as bar:
        for i, (images, targets) in enumerate(loader):
            if i >= n_batches:
                break
            loss = train_step(model, images, targets, criterion, optimizer, scaler, device, amp, dtype, cl, teacher)
            if ema is not None:
                ema.update_parameters(model)
            total += loss * len(targets)
            seen += len(targets)
            bar.update(1)
            if progress and (i % 10 == 0 or i == n_batches - 1):
                bar.set_postfix(loss=f"{total.item() / seen:.4f}")
    return (total.item() / max(seen, 1)), seen


def _validate(model: nn.Module, loader: torch.utils.data.DataLoader, device: str, cfg: TrainConfig) -> dict[str, float]:
    logits, labels = infer_logits(model, loader, device, _use_amp(cfg, device), cfg.channels_last)
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    return {
        "val_loss": float(F.cross_entropy(logits, labels)),
        "val_macro_f1": macro_f1(y, pred),
        "val_accuracy": float((pred == y).mean()),
    }


def train_model(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    label_space: LabelSpace,
    cfg: TrainConfig,
    out_dir: Path,
    on_epoch: Callable[[int, dict], None] | None = None,
    resume: bool = False,
    progress: bool = True,
    image_cache: ImageCache | None = None,
    teacher: Teacher | None = None,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``train_df``, pick the best epoch on ``val_df``; see the module doc.

    ``dist``: this process's place among ``cfg.processes`` data-parallel processes (inside a ``torchrun`` worker,
    :mod:`steelqc.tasks.model.distributed`): the model is wrapped in DDP, each rank trains on its shard of every
    epoch (``ddp/rank-<r>.jsonl`` records which samples), and rank 0 alone validates (the full validation split,
    the same figures one process computes), writes the checkpoints and calls ``on_epoch``; its early-stopping
    decision is broadcast. Every rank returns the run's result (rank 0's ``last.pt``).

    ``teacher``: the loaded ``cfg.distill_from`` model (required then, refused otherwise): the loss becomes
    :class:`~steelqc.tasks.model.distill.DistillationLoss` with ``cfg.distill_temperature``/``distill_alpha``.

    ``image_cache``: where decoded images are kept when ``cfg.cache_images`` (default: the settings' cache, on disk
    under ``STEELQC_HOME`` across runs).
    """
    start = time.perf_counter()
    if len(train_df) == 0 or len(val_df) == 0:
        raise ValueError(f"need training and validation images, got {len(train_df)} and {len(val_df)}")
    if bool(cfg.distill_from) != (teacher is not None):
        raise DistillationError(
            f"distill_from is {cfg.distill_from!r} but {'a' if teacher is not None else 'no'} teacher model was "
            "given: load the teacher (steelqc train --distill-from URI) or leave distill_from unset"
        )
    if teacher is not None:
        check_teacher(teacher, label_space, cfg.input_spec)
    if (cfg.processes > 1) != (dist is not None):
        raise ValueError(
            f"processes={cfg.processes} {'without' if dist is None else 'with'} a process group: train_model runs "
            "one process; steelqc.tasks.model.distributed.fit launches torchrun for more"
        )
    main = dist is None or dist.is_main
    ckpt_dir = Path(out_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    device = dist.device if dist is not None else select_device(cfg.device)
    threads = set_torch_threads(cfg.threads)
    digest = data_digest(train_df, val_df)

    state: dict[str, Any] | None = None
    if resume and last_path.is_file():
        state = resumable_state(last_path) if main else read_checkpoint(last_path)
        _check_resume(state, cfg, label_space, digest)
        if state["stopped_early"] or state["epoch"] >= cfg.epochs:
            log.info("run in %s already finished (%d epochs): nothing to do", out_dir, state["epoch"])
            return _result(state, ckpt_dir, time.perf_counter() - start, device, int(state["epoch"]))
        log.info("resuming %s after epoch %d of %d", out_dir, state["epoch"], cfg.epochs)
    elif resume:
        log.info("no %s to resume from: starting afresh", last_path)
    elif last_path.exists():
        log.warning("%s exists and resume=False: starting afresh and overwriting it", last_path)

    seed_everything(cfg.seed)
    spec = cfg.input_spec
    model, weights_used = build_model(
        cfg.model,
        label_space.num_classes,
        weights="none" if state else cfg.weights,
        freeze_stages=cfg.freeze_stages,
        weights_fallback=cfg.weights_fallback,
        in_channels=spec.channels,
    )
    if state:
        model.load_state_dict(state["model_state"])
        weights_used = state["weights_used"]
    cuda = device.startswith("cuda")
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    trained = wrap(model, dist)  # DDP over `model` with processes > 1; `model` is what is validated and saved
    if cuda:
        torch.backends.cudnn.benchmark = True

    if cfg.cache_images and image_cache is None:
        image_cache = ImageCache.from_settings(load_settings())
    cache = image_cache if cfg.cache_images else None
    train_ds = ManifestDataset(train_df, label_space, spec, train=True, cache=cache, seed=cfg.seed, augment=cfg.augment)
    val_ds = ManifestDataset(val_df, label_space, spec, train=False, cache=cache if main else None)  # rank 0 validates
    shard = shard_sampler(train_ds, cfg.balanced_sampler, cfg.seed, dist.rank, dist.world_size) if dist else None
    train_loader = make_loader(
        train_ds, cfg.batch_size, True, cfg.balanced_sampler, cfg.num_workers, device, cfg.seed, sampler=shard
    )
    val_loader = make_loader(val_ds, max(cfg.batch_size, 32), False, False, cfg.num_workers, device, cfg.seed)
    loss_weights = class_weights(train_ds.labels, label_space.num_classes) if cfg.weighted_loss else None
    criterion: nn.Module = nn.CrossEntropyLoss(
        weight=loss_weights.to(device) if loss_weights is not None else None, label_smoothing=cfg.label_smoothing
    )
    taught = None
    if teacher is not None:
        criterion = DistillationLoss(criterion, cfg.distill_temperature, cfg.distill_alpha)
        taught = (prepare_teacher(teacher, device, cfg.channels_last), (teacher.spec.height, teacher.spec.width))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_on = _use_amp(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_on and cuda and cfg.amp_dtype == "float16")
    ema = (
        torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=_ema_update(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0 and main
        else None
    )
    scored = ema.module if ema is not None else model  # the weights validated and kept as best.pt

    history: list[dict[str, Any]] = []
    best_f1, best_loss, best_epoch, bad_epochs, first_epoch = -1.0, math.inf, 0, 0, 0
    if state:
        optimizer.load_state_dict(state["optimizer_state"])
        if ema is not None:
            ema.load_state_dict(state["ema_state"])
        best_loss = float(state.get("best_val_loss", math.inf))
        if state["scaler_state"]:
            scaler.load_state_dict(state["scaler_state"])
        set_rng_state(state["rng"])
        history = list(state["history"])
        best_f1, best_epoch = float(state["best_val_macro_f1"]), int(state["best_epoch"])
        bad_epochs, first_epoch = int(state["bad_epochs"]), int(state["epoch"])
    meta = _metadata(cfg, label_space, weights_used)
    if teacher is not None:
        log.info(
            "distilling from %s (temperature %s, soft weight %s)", teacher.uri, cfg.distill_temperature,
            cfg.distill_alpha,
        )  # fmt: skip
    log.info(
        "training %s on %s (%d threads, %s): %d train / %d val images, weights %s",
        cfg.model,
        device,
        threads,
        f"autocast {'bfloat16' if not cuda else cfg.amp_dtype}" if amp_on else "float32",
        len(train_ds),
        len(val_ds),
        weights_used,
    )

    stopped, rank = False, dist.rank if dist is not None else 0
    for epoch in range(first_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = lr_at(epoch, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        set_loader_epoch(train_loader, cfg.seed, epoch, rank)
        torch.manual_seed(cfg.seed * 100_003 + epoch + 7_919 * rank)
        train_loss, seen = _train_epoch(
            trained, train_loader, criterion, optimizer, scaler, device, cfg, f"epoch {epoch + 1}/{cfg.epochs}",
            progress, ema, taught,
        )  # fmt: skip
        train_seconds = time.perf_counter() - t0
        if dist is not None:
            _record_rank(Path(out_dir), dist, epoch + 1, seen, shard.drawn if shard is not None else [])
            total, count = sum_over_ranks([train_loss * seen, seen], dist)  # every rank's images: the epoch's figures
            train_loss, seen = total / max(count, 1.0), int(count)
        if not main:
            if broadcast_flag(False, dist):  # rank 0's early-stopping decision
                break
            continue
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, **_validate(scored, val_loader, device, cfg), "lr": lr}
        metrics.update(
            seconds=round(time.perf_counter() - t0, 3), images_per_second=round(seen / max(train_seconds, 1e-9), 2)
        )
        history.append(metrics)
        if _better(metrics, best_f1, best_loss):
            best_f1, best_loss, best_epoch, bad_epochs = metrics["val_macro_f1"], metrics["val_loss"], epoch + 1, 0
            _atomic_save(
                {**meta, "kind": "best", "epoch": epoch + 1, "val_metrics": metrics, "model_state": _cpu_state(scored)},
                best_path,
            )
        else:
            bad_epochs += 1
        stopped = cfg.patience > 0 and bad_epochs >= cfg.patience and epoch + 1 < cfg.epochs
        state = {
            **meta,
            "kind": "last",
            "epoch": epoch + 1,
            "best_epoch": best_epoch,
            "best_val_macro_f1": best_f1,
            "best_val_loss": best_loss,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped,
            "history": history,
            "data_digest": digest,
            "model_state": _cpu_state(model),
            "ema_state": _cpu_state(ema) if ema is not None else {},
            "optimizer_state": optimizer.state_dict(),
            "scaler_state": scaler.state_dict(),
            "rng": rng_state(),
        }
        _atomic_save(state, last_path)
        log.info(
            "epoch %d/%d: train_loss %.4f val_loss %.4f val_macro_f1 %.4f (%.1f img/s)",
            epoch + 1, cfg.epochs, train_loss, metrics["val_loss"], metrics["val_macro_f1"],
            metrics["images_per_second"],
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(epoch + 1, dict(metrics))
        if broadcast_flag(stopped, dist):
            log.info("early stop after epoch %d: no validation gain for %d epochs", epoch + 1, bad_epochs)
            break
    if dist is not None:
        barrier(dist)  # rank 0's last.pt is written: every rank reports from it
        state = state if main else read_checkpoint(last_path)
    assert state is not None
    if cache is not None:
        log.info("image cache: %s", cache.stats())
    return _result(state, ckpt_dir, time.perf_counter() - start, device, first_epoch)


def _record_rank(out_dir: Path, dist: DistContext, epoch: int, seen: int, drawn: list[int]) -> None:
    """Append this rank's epoch to ``ddp/rank-<rank>.jsonl``: who it is (pid, host, backend, device), the images it
    trained on and the train-split positions its sampler drew (the evidence of disjoint shards)."""
    folder = out_dir / "ddp"
    folder.mkdir(parents=True, exist_ok=True)
    record = {**dist.describe(), "epoch": epoch, "images": int(seen), "indices": [int(i) for i in drawn]}
    with (folder / f"rank-{dist.rank}.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def resumable_state(last_path: Path) -> dict[str, Any]:
    """``last.pt`` for ``--resume``; a corrupt one is moved aside (so the next attempt starts this run's training
    afresh) and reported with its path."""
    try:
        return read_checkpoint(last_path)
    except CheckpointError as exc:
        aside = last_path.with_name(f"{last_path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        last_path.replace(aside)
        raise CheckpointError(
            f"{exc}. Cannot resume from it: moved it to {aside}; run again (with or without --resume) to train "
            "this run from the start"
        ) from exc
