"""Distillation: the loss, which teacher may teach which student, and a student that really learns from its teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.distill import DistillationError, DistillationLoss, Teacher, check_teacher, teacher_logits
from steelqc.tasks.model.inference import load_model, predict_proba
from steelqc.tasks.model.models import build_model, count_parameters
from steelqc.tasks.model.train import train_model
from tests.helpers import LABELS, SHAPE, cfg

# ------------------------------------------------------------------------------------------------ the loss


def test_the_loss_mixes_softened_kl_and_the_hard_loss() -> None:
    torch.manual_seed(0)
    student, teacher, targets = torch.randn(6, 3), torch.randn(6, 3) * 3, torch.tensor([0, 1, 2, 0, 1, 2])
    hard = torch.nn.CrossEntropyLoss()
    t = 4.0
    kl = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    assert torch.allclose(DistillationLoss(hard, t, 0.0)(student, targets, teacher), hard(student, targets))
    assert torch.allclose(DistillationLoss(hard, t, 1.0)(student, targets, teacher), kl)
    mixed = DistillationLoss(hard, t, 0.3)(student, targets, teacher)
    assert torch.allclose(mixed, 0.3 * kl + 0.7 * hard(student, targets))
    assert float(DistillationLoss(hard, t, 1.0)(teacher, targets, teacher)) == pytest.approx(0.0, abs=1e-6)
    for bad in ((0.0, 0.5), (2.0, 1.5), (2.0, -0.1)):
        with pytest.raises(ValueError):
            DistillationLoss(hard, *bad)


def test_the_teacher_sees_the_batch_at_its_own_input_size() -> None:
    model, _ = build_model("simple_cnn", 3)
    model.eval()
    images = torch.randn(2, 3, 16, 40)
    out = teacher_logits(model, images, (32, 64))
    expected = model(F.interpolate(images, size=(32, 64), mode="bilinear", align_corners=False, antialias=True))
    assert out.shape == (2, 3) and not out.requires_grad
    assert torch.allclose(out, expected, atol=1e-5)


def test_the_student_is_mobilenet_v2_at_half_width() -> None:
    student, weights = build_model("mobilenet_v2_050", 5, weights="none")
    teacher, _ = build_model("mobilenet_v2", 5, weights="none")
    assert weights == "none (random init)"
    assert count_parameters(student) < 0.35 * count_parameters(teacher)
    assert student(torch.zeros(1, 3, 64, 400)).shape == (1, 5)


# ------------------------------------------------------------------------------------------------ who may teach


def _teacher(space: LabelSpace = LABELS, spec: InputSpec | None = None) -> Teacher:
    return Teacher(build_model("simple_cnn", space.num_classes)[0], spec or InputSpec(*SHAPE), space, "models:/t/1")


def test_a_teacher_must_score_the_same_classes_from_the_same_tensors() -> None:
    check_teacher(_teacher(spec=InputSpec(64, 128)), LABELS, InputSpec(*SHAPE))  # another size is resized
    other = LabelSpace({0: "ok", 1: "crack", 2: "dent"}, "crack")
    with pytest.raises(DistillationError, match=r"models:/t/1 has label space \['ok', 'crack', 'dent'\]"):
        check_teacher(_teacher(other), LABELS, InputSpec(*SHAPE))
    with pytest.raises(DistillationError, match="critical 'scratch'"):
        check_teacher(_teacher(), LabelSpace({0: "ok", 1: "crack", 2: "scratch"}, "scratch"), InputSpec(*SHAPE))
    with pytest.raises(DistillationError, match="normalize: teacher 'imagenet', student 'per_image'"):
        check_teacher(_teacher(spec=InputSpec(*SHAPE, normalize="imagenet")), LABELS, InputSpec(*SHAPE))


def test_train_model_refuses_a_missing_or_unasked_teacher(data, tmp_path: Path) -> None:
    train_df, val_df = data
    with pytest.raises(DistillationError, match="no teacher model was given"):
        train_model(train_df, val_df, LABELS, cfg(distill_from="models:/t/1"), tmp_path, progress=False)
    with pytest.raises(DistillationError, match="distill_from is None but a teacher"):
        train_model(train_df, val_df, LABELS, cfg(), tmp_path, progress=False, teacher=_teacher())


def test_distillation_settings_join_the_fingerprint_only_when_distilling() -> None:
    plain = cfg()
    assert "distill_from" not in plain.fingerprint_dict()
    assert plain.fingerprint() == cfg(distill_alpha=0.9).fingerprint()  # not distilling: alpha is inert
    taught = cfg(distill_from="models:/t/1")
    assert taught.fingerprint() != plain.fingerprint()
    assert taught.fingerprint() != cfg(distill_from="models:/t/2").fingerprint()
    assert taught.fingerprint() != cfg(distill_from="models:/t/1", distill_temperature=3.0).fingerprint()
    with pytest.raises(ValueError):
        cfg(distill_alpha=1.5)
    for blank in ("", "  "):  # `--distill-from ""` must not quietly train without a teacher
        with pytest.raises(ValueError, match="distill_from is blank"):
            cfg(distill_from=blank)


# ------------------------------------------------------------------------------------------------ learning


def test_the_student_learns_what_the_teacher_knows(data, tmp_path: Path) -> None:
    """A teacher trained on the blobs, then with crack and scratch swapped in its head: a student taught only by
    its soft labels (alpha 1) learns the swap; with alpha 0 (hard labels only) it learns the true labels."""
    train_df, val_df = data
    trained = train_model(train_df, val_df, LABELS, cfg(epochs=12), tmp_path / "teacher", progress=False)
    assert trained.best_val_macro_f1 >= 0.7
    model, meta = load_model(trained.best_checkpoint)
    with torch.no_grad():  # swap the crack and scratch outputs
        model.classifier.weight[[1, 2]] = model.classifier.weight[[2, 1]].clone()
        model.classifier.bias[[1, 2]] = model.classifier.bias[[2, 1]].clone()
    teacher = Teacher(model, InputSpec.from_dict(meta["input_spec"]), LABELS, "models:/swapped/1")
    truth = val_df["label"].to_numpy()
    teacher_pred = predict_proba(model, val_df, LABELS, teacher.spec).argmax(1)
    assert (teacher_pred == np.array([0, 2, 1])[truth]).mean() >= 0.7

    taught_by = dict(epochs=6, distill_from="models:/swapped/1")
    student_preds = {}
    for alpha in (1.0, 0.0):
        result = train_model(
            train_df, val_df, LABELS, cfg(distill_alpha=alpha, distill_temperature=2.0, **taught_by),
            tmp_path / f"alpha{alpha}", progress=False, teacher=teacher,
        )  # fmt: skip
        student, student_meta = load_model(result.last_checkpoint)  # the weights trained, whatever val says
        assert student_meta["cfg"]["distill_from"] == "models:/swapped/1"
        spec = InputSpec.from_dict(student_meta["input_spec"])
        student_preds[alpha] = predict_proba(student, val_df, LABELS, spec).argmax(1)
    taught, alone = student_preds[1.0], student_preds[0.0]
    assert (taught == teacher_pred).mean() >= 0.7  # follows the teacher ...
    assert (taught[truth > 0] == truth[truth > 0]).mean() <= 0.3  # ... and so calls cracks scratches
    assert (alone == truth).mean() >= 0.7
