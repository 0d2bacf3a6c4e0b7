"""One source of training defaults: TrainConfig's defaults are the settings' TrainDefaults, and
STEELQC_TRAIN__* settings reach the resolved config."""

from __future__ import annotations

import pytest

from steelqc.tasks.config import DEFAULT_SEED, SEVERSTAL_SHAPE, TINY_PROFILE, TrainDefaults, load_settings
from steelqc.tasks.data.datasets import default_input_spec, default_num_workers
from steelqc.tasks.model.inference import select_device
from steelqc.tasks.model.train import TrainConfig, resolve_config


def test_train_config_defaults_are_the_settings_defaults() -> None:
    config, defaults = TrainConfig(), TrainDefaults()
    device = select_device("auto")
    spec = default_input_spec(*SEVERSTAL_SHAPE, device)
    chosen = {"height": spec.height, "width": spec.width, "num_workers": default_num_workers(device)}
    chosen["threads"] = None  # decided when training starts (the CPUs the process may use), not in the config
    for name, value in defaults.model_dump().items():
        expected = chosen[name] if value is None else value
        assert getattr(config, name) == expected, name
    assert config.seed == DEFAULT_SEED == load_settings().seed
    assert config.weights_fallback == load_settings().weights_fallback


def test_resolved_config_is_the_defaults_on_a_severstal_image() -> None:
    assert resolve_config(load_settings(), {}, image_shape=SEVERSTAL_SHAPE) == TrainConfig()


def test_train_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEELQC_TRAIN__EPOCHS", "3")
    monkeypatch.setenv("STEELQC_TRAIN__WEIGHTED_LOSS", "true")
    monkeypatch.setenv("STEELQC_TRAIN__MODEL", "resnet50")
    cfg = resolve_config(load_settings(), {"epochs": None, "lr": 0.01})
    assert (cfg.epochs, cfg.weighted_loss, cfg.model, cfg.lr) == (3, True, "resnet50", 0.01)
    tiny = resolve_config(load_settings(), {}, "tiny")
    assert {k: getattr(tiny, k) for k in TINY_PROFILE} == TINY_PROFILE


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_config(load_settings(), {}, "huge")
