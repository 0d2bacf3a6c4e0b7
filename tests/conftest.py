"""Shared test fixtures: an isolated STEELQC_HOME per test and access to ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STEELQC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped when it is not there (a user's fresh clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present (../shared/data is only on the project machines)")
    return path


@pytest.fixture(autouse=True)
def steelqc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own STEELQC_HOME and no stray settings from the environment."""
    for key in list(os.environ):
        if key.startswith("STEELQC_") and key != "STEELQC_SHARED_DATA":
            monkeypatch.delenv(key)
    home = tmp_path / "steelqc-home"
    monkeypatch.setenv("STEELQC_HOME", str(home))
    return home
