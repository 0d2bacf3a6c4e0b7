"""Inference: the device, checkpoints read without running code, rebuilding a model, batch prediction.

Everything that scores a model (evaluation, the registered model, export, the monitor, the dashboard) imports
this module, never :mod:`steelqc.tasks.model.train`. Checkpoints are read with ``torch.load(weights_only=True)``:
tensors and plain values only.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from steelqc.tasks.data.datasets import Corruption, InputSpec, ManifestDataset, make_loader
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.models import build_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "steelqc-checkpoint/1"


def select_device(prefer: str = "auto") -> str:
    """``"cuda"`` when available (and not ``prefer="cpu"``), else ``"cpu"``."""
    prefer = (prefer or "auto").lower()
    if prefer == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda" if prefer == "auto" else prefer
    if prefer != "auto":
        log.warning("device %r requested but CUDA is not available: using the CPU", prefer)
    return "cpu"


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container limited to
    2 CPUs on a 64-core host sees 64 cores, and 64 torch threads there fight over 2 CPUs' time)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`available_cpus`); returns the number set."""
    wanted = int(threads) if threads else available_cpus()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
        log.debug("torch threads: %d", wanted)
    return wanted


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where bf16 autocast speeds training up.

    Elsewhere oneDNN emulates bf16, which is slower than float32, so autocast stays off.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_context(device: str, enabled: bool, dtype: torch.dtype = torch.float16) -> AbstractContextManager:
    """Mixed precision when enabled: ``torch.autocast`` in ``dtype`` on CUDA, in bfloat16 on the CPU (the only
    reduced precision CPU autocast runs fast, and only where :func:`cpu_supports_bf16`); else a no-op."""
    if not enabled:
        return nullcontext()
    if str(device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=dtype)
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


def to_device(images: torch.Tensor, device: str, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=fmt)


@torch.inference_mode()
def infer_logits(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: str, amp: bool = False, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 CPU logits and labels of every batch of ``loader``, in order."""
    model.eval()
    outs, labels = [], []
    for images, targets in loader:
        with autocast_context(device, amp):
            logits = model(to_device(images, device, channels_last))
        outs.append(logits.float().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(outs), torch.cat(labels)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a steelqc checkpoint); names the file."""


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """A steelqc checkpoint's contents (``weights_only`` load: tensors and plain values, never code).

    Raises :class:`CheckpointError` naming the file when it is truncated, corrupt or not a steelqc checkpoint.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle opcode, refused global, I/O error...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a steelqc checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    return state


def load_model(checkpoint: Path | str, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from ``best.pt``/``last.pt`` (weights_only load), in eval mode on ``device``.

    Metadata: ``model_name``, ``num_classes``, ``label_space`` (dict), ``input_spec`` (dict), ``cfg`` (dict),
    ``weights_used``, ``epoch`` and, for ``best.pt``, ``val_metrics``.
    """
    state = read_checkpoint(checkpoint)
    model, _ = build_model(
        state["model_name"], int(state["num_classes"]), weights="none", in_channels=state["input_spec"]["channels"]
    )
    model.load_state_dict(state["model_state"])
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k not in ("model_state", "optimizer_state", "scaler_state", "rng")}
    return model, meta


def predict_proba(
    model: nn.Module,
    frame: pd.DataFrame,
    label_space: LabelSpace,
    spec: InputSpec | dict[str, Any],
    batch_size: int = 32,
    device: str = "cpu",
    corruption: Corruption | None = None,
    num_workers: int = 0,
    channels_last: bool = True,
) -> np.ndarray:
    """N x C softmax probabilities in ``frame`` order (``frame`` needs ``path``; ``label`` is optional).

    Moves ``model`` to ``device`` (in channels-last memory unless switched off) and puts it in eval mode.
    """
    spec = spec if isinstance(spec, InputSpec) else InputSpec.from_dict(spec)
    if len(frame) == 0:
        return np.zeros((0, label_space.num_classes), dtype=np.float32)
    cuda = str(device).startswith("cuda")
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    dataset = ManifestDataset(frame, label_space, spec, train=False, corruption=corruption)
    loader = make_loader(dataset, batch_size, False, False, num_workers, device, 0)
    logits, _ = infer_logits(model, loader, device, amp=cuda, channels_last=channels_last)
    return torch.softmax(logits, dim=1).numpy()
