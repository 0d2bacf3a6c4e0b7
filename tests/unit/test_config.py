"""Settings: defaults, YAML file, environment precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from steelqc.tasks.config import Settings, label_priority_ids, load_settings


def test_defaults_match_the_product() -> None:
    s = Settings()
    assert s.class_names == {0: "ok", 1: "crack", 2: "scratch", 3: "dent", 4: "other"}
    assert s.critical_class == "crack" and s.class_ids[s.critical_class] == 1
    assert s.image_shape == (256, 1600) and s.seed == 42
    assert (s.split.train, s.split.val, s.split.test) == (0.70, 0.15, 0.15)
    assert s.gates.macro_f1_min == 0.80 and s.gates.glare_delta_f1_max == 0.03
    assert s.priority_ids() == [1, 2, 3, 4]


def test_environment_overrides_yaml_and_yaml_overrides_defaults(tmp_path: Path, monkeypatch) -> None:
    cfg = tmp_path / "steelqc.yaml"
    cfg.write_text("seed: 7\ncritical_class: dent\ngates:\n  macro_f1_min: 0.9\n")
    s = load_settings(cfg)
    assert (s.seed, s.critical_class, s.gates.macro_f1_min) == (7, "dent", 0.9)
    monkeypatch.setenv("STEELQC_SEED", "11")
    monkeypatch.setenv("STEELQC_GATES__MACRO_F1_MIN", "0.85")
    s = load_settings(cfg)
    assert (s.seed, s.gates.macro_f1_min, s.critical_class) == (11, 0.85, "dent")
    monkeypatch.setenv("STEELQC_CONFIG", str(cfg))
    assert Settings().critical_class == "dent"


def test_home_comes_from_the_environment(steelqc_home: Path) -> None:
    assert Settings().home == steelqc_home
    assert Settings().runs_dir == steelqc_home / "runs"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"critical_class": "rust"},
        {"critical_class": "ok"},
        {"class_names": {1: "a", 2: "b"}},
        {"class_names": {0: "ok", 1: "a", 2: "a"}, "critical_class": "a"},
        {"split": {"train": 0.8, "val": 0.3, "test": 0.1}},
        {"label_priority": ["nope"]},
        {"unknown_setting": 1},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**kwargs)


def test_missing_yaml_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_label_priority_puts_critical_first_unless_configured() -> None:
    names = {0: "ok", 1: "crack", 2: "scratch", 3: "dent", 4: "other"}
    assert label_priority_ids(names, "dent") == [3, 1, 2, 4]
    assert label_priority_ids(names, "dent", ["other"]) == [4, 3, 1, 2]
    assert Settings(critical_class="dent", label_priority=["scratch"]).priority_ids() == [2, 3, 1, 4]
