"""Fixtures of the data tests (ingest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_messy


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A Severstal data set holding one of each fault next to valid images (tests/helpers.py, make_messy)."""
    return make_messy(tmp_path / "messy")
