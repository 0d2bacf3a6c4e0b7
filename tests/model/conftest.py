"""Fixtures of the model tests: the tiny blob task's data and a machine without network."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import make_split


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train (72) and validation (36) blob images (tests/helpers.py, make_split), made once per module."""
    root = tmp_path_factory.mktemp("blobs")
    return make_split(root / "train", 72, 1), make_split(root / "val", 36, 2)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network (name resolution and connections fail, as on the project machines) and an empty torch hub."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home"
