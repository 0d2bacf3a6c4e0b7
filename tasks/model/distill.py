"""Knowledge distillation: a small student learns from a registered teacher's soft labels (README "Distillation").

The loss (Hinton et al., 2015) mixes the hard labels with the teacher's probabilities softened by a temperature
``T``::

    loss = alpha * T² * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

``T²`` keeps the soft term's gradients on the scale of the hard term's whatever the temperature. The teacher sees
the same (augmented) batch as the student, resized to its own input size when the two differ; it stays frozen in
eval mode. Which teacher may teach which student is checked here: the same label space (same classes in the same
output order) and the same way of turning an image into a tensor (channels, normalisation, grey or colour).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace


class DistillationError(ValueError):
    """The teacher cannot teach this student (label space or input differ, or no teacher was given)."""


@dataclass
class Teacher:
    """A loaded teacher: the network, the input it was trained on, its label space and where it came from."""

    model: nn.Module
    spec: InputSpec
    label_space: LabelSpace
    uri: str


def check_teacher(teacher: Teacher, label_space: LabelSpace, spec: InputSpec) -> None:
    """Raise :class:`DistillationError` unless ``teacher`` scores the student's classes from the student's tensors."""
    if teacher.label_space.to_dict() != label_space.to_dict():
        raise DistillationError(
            f"teacher {teacher.uri} has label space {teacher.label_space.names} (critical "
            f"{teacher.label_space.critical_class!r}); the data has {label_space.names} (critical "
            f"{label_space.critical_class!r}): a teacher must score the same classes in the same order"
        )
    mine, theirs = spec.to_dict(), teacher.spec.to_dict()
    differ = [k for k in ("channels", "normalize", "image_channels") if mine.get(k) != theirs.get(k)]
    if differ:
        detail = ", ".join(f"{k}: teacher {theirs.get(k)!r}, student {mine.get(k)!r}" for k in differ)
        raise DistillationError(f"teacher {teacher.uri} takes other input tensors ({detail})")


class DistillationLoss(nn.Module):
    """``alpha`` x temperature-softened KL to the teacher + (1 - ``alpha``) x ``hard`` (the usual criterion)."""

    def __init__(self, hard: nn.Module, temperature: float, alpha: float) -> None:
        super().__init__()
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation needs temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
        self.hard, self.temperature, self.alpha = hard, float(temperature), float(alpha)

    def soft(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """T² x KL(teacher || student) at temperature T, averaged over the batch."""
        t = self.temperature
        student = F.log_softmax(logits / t, dim=1)
        target = F.log_softmax(teacher_logits / t, dim=1)
        return F.kl_div(student, target, log_target=True, reduction="batchmean") * (t * t)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        hard = self.hard(logits, targets) if self.alpha < 1.0 else logits.new_zeros(())
        soft = self.soft(logits, teacher_logits) if self.alpha > 0.0 else logits.new_zeros(())
        return self.alpha * soft + (1.0 - self.alpha) * hard


def prepare_teacher(teacher: Teacher, device: str, channels_last: bool) -> nn.Module:
    """The teacher network frozen, in eval mode, on ``device``."""
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model = teacher.model.to(device, memory_format=fmt).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def teacher_logits(model: nn.Module, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The frozen teacher's logits for the student's batch, resized to the teacher's ``(height, width)``."""
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        return model(images).float()
