"""Fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import H, W


@pytest.fixture(scope="module")
def full_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """40 full-size synthetic images with a defect-heavy mix and frequent second defects (once per module)."""
    out = tmp_path_factory.mktemp("synth") / "full"
    mix = {0: 0.2, 1: 0.2, 2: 0.2, 3: 0.2, 4: 0.2}
    summary = generate_dataset(out, 40, seed=3, mix=mix, shape=(H, W), multi_defect_rate=0.3)
    return out, summary
