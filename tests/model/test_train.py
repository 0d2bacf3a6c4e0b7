"""Training behaviour on a tiny learnable task: learning, checkpoints, exact resume, early stopping, loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from steelqc.tasks.config import load_settings
from steelqc.tasks.data.datasets import InputSpec, class_weights
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.inference import CheckpointError, load_model, predict_proba, select_device
from steelqc.tasks.model.models import build_model
from steelqc.tasks.model.train import (
    ResumeError,
    TrainConfig,
    _better,
    lr_at,
    resolve_config,
    train_model,
    train_step,
)
from tests.helpers import LABELS, SHAPE, blob_image, cfg

TIMING_KEYS = {"seconds", "images_per_second"}


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


# ------------------------------------------------------------------------------------------------ config


def test_config_round_trip_and_fingerprint() -> None:
    c = cfg(scheduler="cosine")
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert c.input_spec == InputSpec(*SHAPE)
    assert TrainConfig(**InputSpec(48, 48, 1).to_dict(), model="resnet50").input_spec == InputSpec(48, 48, 1)
    same = cfg(scheduler="cosine", epochs=9, patience=5, num_workers=2, device="cpu")
    assert c.fingerprint() == same.fingerprint()
    assert c.fingerprint() != cfg(scheduler="cosine", lr=1e-2).fingerprint()
    with pytest.raises(ValueError):
        TrainConfig(model="vgg")
    assert select_device("cpu") == "cpu"
    assert select_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cosine_schedule() -> None:
    c = cfg(epochs=4, scheduler="cosine", lr=1.0)
    assert [round(lr_at(e, c), 4) for e in range(4)] == [1.0, 0.8536, 0.5, 0.1464]
    assert lr_at(3, cfg(epochs=4, scheduler="none", lr=0.5)) == 0.5


# ------------------------------------------------------------------------------------------------ learning


def test_train_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = torch.tensor([i % 3 for i in range(24)])
    imgs = np.stack([blob_image(int(y), rng) for y in labels]).astype(np.float32)
    x = torch.from_numpy((imgs - imgs.mean((1, 2), keepdims=True)) / imgs.std((1, 2), keepdims=True))[:, None]
    x = x.expand(-1, 3, -1, -1).contiguous()
    model, _ = build_model("simple_cnn", 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights(labels.tolist(), 3))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [float(train_step(model, x, labels, criterion, optimizer, scaler, "cpu")) for _ in range(10)]
    assert losses[-1] < 0.5 * losses[0]


def test_training_learns_and_writes_loadable_checkpoints(data, tmp_path: Path) -> None:
    train_df, val_df = data
    calls: list[tuple[int, dict]] = []
    result = train_model(
        train_df,
        val_df,
        LABELS,
        cfg(epochs=5, scheduler="cosine"),
        tmp_path,
        on_epoch=lambda e, m: calls.append((e, m)),
    )
    assert result.best_val_macro_f1 >= 0.7  # chance is 1/3
    assert result.epochs_run == len(result.history) == 5 and not result.stopped_early
    assert [e for e, _ in calls] == [1, 2, 3, 4, 5]
    keys = {"epoch", "train_loss", "val_loss", "val_macro_f1", "val_accuracy", "lr", "seconds", "images_per_second"}
    assert all(set(m) == keys for _, m in calls)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_macro_f1 == max(h["val_macro_f1"] for h in result.history)
    assert result.weights_used == "none (random init)" and result.device == "cpu"
    best = torch.load(result.best_checkpoint, weights_only=True)
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert best["epoch"] == result.best_epoch and last["epoch"] == 5
    assert best["label_space"] == LABELS.to_dict() and best["input_spec"] == InputSpec(*SHAPE).to_dict()
    assert best["model_name"] == "simple_cnn" and best["num_classes"] == 3
    assert not list(result.best_checkpoint.parent.glob("*.tmp"))


# ------------------------------------------------------------------------------------------------ resume


def test_resume_continues_exactly_like_an_uninterrupted_run(data, tmp_path: Path) -> None:
    train_df, val_df = data
    settings = dict(scheduler="none", max_train_batches=4)
    straight = train_model(train_df, val_df, LABELS, cfg(epochs=4, **settings), tmp_path / "a", progress=False)

    first = train_model(train_df, val_df, LABELS, cfg(epochs=2, **settings), tmp_path / "b", progress=False)
    calls: list[int] = []
    resumed = train_model(
        train_df, val_df, LABELS, cfg(epochs=4, **settings), tmp_path / "b",
        on_epoch=lambda e, m: calls.append(e), resume=True, progress=False,
    )  # fmt: skip
    assert calls == [3, 4] and resumed.resumed_from_epoch == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history
    assert without_timing(resumed.history) == without_timing(straight.history)
    a = torch.load(straight.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    steps = {int(s["step"]) for s in b["optimizer_state"]["state"].values()}
    assert steps == {16}  # 4 epochs x 4 batches: the optimizer state was carried over, not restarted


def test_truncated_checkpoint_names_the_file_and_the_next_resume_starts_afresh(data, tmp_path: Path) -> None:
    train_df, val_df = data
    settings = dict(scheduler="none", max_train_batches=2)
    first = train_model(train_df, val_df, LABELS, cfg(epochs=1, **settings), tmp_path, progress=False)
    last = first.last_checkpoint
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a crash while writing, a full disk
    with pytest.raises(CheckpointError) as caught:
        train_model(train_df, val_df, LABELS, cfg(epochs=2, **settings), tmp_path, resume=True, progress=False)
    message = str(caught.value)
    assert str(last) in message and "unreadable checkpoint" in message and "run again" in message
    assert not last.exists() and len(list(last.parent.glob("last.pt.corrupt-*"))) == 1
    again = train_model(train_df, val_df, LABELS, cfg(epochs=2, **settings), tmp_path, resume=True, progress=False)
    assert again.resumed_from_epoch == 0 and again.epochs_run == 2
    assert torch.load(again.last_checkpoint, weights_only=True)["epoch"] == 2


def test_loading_a_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_model(bad)
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(CheckpointError, match="not a steelqc checkpoint"):
        load_model(bad)


def test_interrupted_run_resumes_after_the_last_finished_epoch(data, tmp_path: Path) -> None:
    train_df, val_df = data

    def crash(epoch: int, metrics: dict) -> None:
        raise KeyboardInterrupt  # the process dies right after epoch 1 was checkpointed

    with pytest.raises(KeyboardInterrupt):
        train_model(train_df, val_df, LABELS, cfg(epochs=2, max_train_batches=2), tmp_path, on_epoch=crash)
    calls: list[int] = []
    result = train_model(
        train_df, val_df, LABELS, cfg(epochs=2, max_train_batches=2), tmp_path,
        on_epoch=lambda e, m: calls.append(e), resume=True,
    )  # fmt: skip
    assert calls == [2] and [h["epoch"] for h in result.history] == [1, 2]

    again = train_model(
        train_df, val_df, LABELS, cfg(epochs=2, max_train_batches=2), tmp_path,
        on_epoch=lambda e, m: calls.append(e), resume=True,
    )  # fmt: skip
    assert calls == [2] and again.history == result.history  # a finished run returns at once


def test_resume_with_other_settings_is_refused(data, tmp_path: Path) -> None:
    train_df, val_df = data
    train_model(train_df, val_df, LABELS, cfg(epochs=1, max_train_batches=1), tmp_path, progress=False)
    with pytest.raises(ResumeError, match="lr"):
        train_model(train_df, val_df, LABELS, cfg(epochs=2, max_train_batches=1, lr=0.1), tmp_path, resume=True)
    other_labels = LabelSpace({0: "ok", 1: "crack", 2: "dent"}, "crack")
    with pytest.raises(ResumeError, match="label space"):
        train_model(train_df, val_df, other_labels, cfg(epochs=2, max_train_batches=1), tmp_path, resume=True)
    with pytest.raises(ResumeError, match="images"):
        train_model(train_df.iloc[1:], val_df, LABELS, cfg(epochs=2, max_train_batches=1), tmp_path, resume=True)


def test_early_stopping_when_validation_does_not_improve(data, tmp_path: Path) -> None:
    train_df, val_df = data
    # every conv block frozen and a vanishing learning rate: predictions cannot get better after epoch 1
    frozen = cfg(epochs=6, patience=2, freeze_stages=3, lr=1e-12, max_train_batches=1)
    result = train_model(train_df, val_df, LABELS, frozen, tmp_path, progress=False)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert len({h["val_macro_f1"] for h in result.history}) == 1
    resumed = train_model(train_df, val_df, LABELS, frozen, tmp_path, resume=True)
    assert resumed.epochs_run == 3  # an early-stopped run is finished


# ------------------------------------------------------------------------------------------------ loading


def test_load_model_round_trip_and_predict_proba(data, tmp_path: Path) -> None:
    train_df, val_df = data
    c = cfg(epochs=1, max_train_batches=2, ema_decay=0.0)  # best.pt = the trained weights themselves
    result = train_model(train_df, val_df, LABELS, c, tmp_path, progress=False)
    model, meta = load_model(result.best_checkpoint)
    assert not model.training
    assert LabelSpace.from_dict(meta["label_space"]) == LABELS and meta["model_name"] == "simple_cnn"
    spec = InputSpec.from_dict(meta["input_spec"])
    probs = predict_proba(model, val_df, LABELS, spec, batch_size=8)
    assert probs.shape == (len(val_df), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)

    state = torch.load(result.last_checkpoint, weights_only=True)["model_state"]
    rebuilt, _ = build_model("simple_cnn", 3)
    rebuilt.load_state_dict(state)
    np.testing.assert_allclose(predict_proba(rebuilt, val_df, LABELS, meta["input_spec"]), probs, atol=1e-6)

    reversed_df = val_df.iloc[::-1].drop(columns=["label"])  # order kept, labels not needed
    np.testing.assert_allclose(predict_proba(model, reversed_df, LABELS, spec), probs[::-1], atol=1e-6)

    def blank(img: np.ndarray, image_id: str) -> np.ndarray:
        return np.zeros_like(img)

    blanked = predict_proba(model, val_df, LABELS, spec, corruption=blank)
    assert np.allclose(blanked, blanked[0], atol=1e-6) and not np.allclose(blanked, probs, atol=1e-3)


def test_weight_average_is_what_is_validated_and_kept(data, tmp_path: Path) -> None:
    train_df, val_df = data
    c = cfg(epochs=1, ema_decay=0.9)
    result = train_model(train_df, val_df, LABELS, c, tmp_path, progress=False)
    best = torch.load(result.best_checkpoint, weights_only=True)["model_state"]
    last = torch.load(result.last_checkpoint, weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in last["ema_state"].items() if k.startswith("module.")}
    assert averaged.keys() == best.keys() and int(last["ema_state"]["n_averaged"]) > 1
    assert all(torch.equal(best[k], averaged[k]) for k in best)
    raw = last["model_state"]
    assert any(not torch.equal(best[k], raw[k]) for k in best if best[k].is_floating_point())
    model, meta = load_model(result.best_checkpoint)
    logits = model(torch.zeros(1, 3, *SHAPE))
    assert logits.shape == (1, 3) and meta["cfg"]["ema_decay"] == 0.9


def test_ties_in_validation_macro_f1_go_to_the_lower_loss() -> None:
    assert _better({"val_macro_f1": 1.0, "val_loss": 0.1}, 1.0, 0.2)
    assert not _better({"val_macro_f1": 1.0, "val_loss": 0.3}, 1.0, 0.2)
    assert _better({"val_macro_f1": 0.9, "val_loss": 9.0}, 0.8, 0.1)
    assert not _better({"val_macro_f1": 0.7, "val_loss": 0.0}, 0.8, 0.1)


def test_the_tiny_profile_trained_twice_gives_identical_figures(data, tmp_path: Path) -> None:
    """Same seed, same machine, same figures: every epoch's metrics, the kept weights and the predictions."""
    train_df, val_df = data
    tiny = resolve_config(load_settings(), {"epochs": 2}, profile="tiny")
    runs = [train_model(train_df, val_df, LABELS, tiny, tmp_path / name, progress=False) for name in ("a", "b")]
    assert without_timing(runs[0].history) == without_timing(runs[1].history)
    weights = [torch.load(r.best_checkpoint, weights_only=True)["model_state"] for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    probs = [predict_proba(load_model(r.best_checkpoint)[0], val_df, LABELS, tiny.input_spec) for r in runs]
    assert np.array_equal(probs[0], probs[1])
