"""The dashboard's plain functions (overlay, folder listing, the registry view, the server command line) and its
app through Streamlit's AppTest (the pages without a model; the browser test drives the real server)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from steelqc.dashboard import catalog, server
from steelqc.dashboard.inspection import folder_images, overlay
from steelqc.model_registry.promotion import CHAMPION, move_alias, register_version
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings

APP = Path(server.APP)


def test_overlay_is_rgb_at_image_size_and_hot_where_the_cam_is() -> None:
    image = np.full((20, 40), 128, dtype=np.uint8)
    cam = np.zeros((4, 8), dtype=np.float32)
    cam[:, 4:] = 1.0  # right half
    out = overlay(image, cam)
    assert out.shape == (20, 40, 3) and out.dtype == np.uint8
    left, right = out[:, :10].astype(int), out[:, -10:].astype(int)
    assert right[..., 0].mean() > left[..., 0].mean() + 50  # red where the CAM is 1
    assert left[..., 2].mean() > right[..., 2].mean()  # blue where it is 0


def test_overlay_keeps_an_rgb_image_rgb() -> None:
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    assert overlay(image, np.ones((5, 5), dtype=np.float32)).shape == (10, 10, 3)


def test_folder_images_lists_image_files_only(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in folder_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert folder_images(tmp_path / "missing") == []


def test_server_binds_loopback_by_default_and_passes_the_home(tmp_path: Path) -> None:
    argv = server.command(port=8599)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--server.port") + 1] == "8599"
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false"
    assert str(APP) in argv and APP.is_file()
    env = server.environment(Path("rel-home"), base={"PATH": "/bin"})
    assert env["STEELQC_HOME"] == str(Path("rel-home").resolve()) and env["PATH"] == "/bin"
    assert "STEELQC_HOME" not in server.environment(None, base={})


def _register(settings: Settings, c, gates: dict) -> str:
    with mlflow.start_run() as run:
        mlflow.log_dict({}, "model/info.json")
        tags = {"gates_passed": "true", "gates": json.dumps(gates), "macro_f1": "0.9", "threshold": "0.4"}
        version, _ = register_version(c, settings.registered_model, f"runs:/{run.info.run_id}/model",
                                      run.info.run_id, tags)  # fmt: skip
    return str(version.version)


@pytest.mark.slow
def test_catalog_lists_versions_aliases_gates_and_the_audit_trail() -> None:
    settings = Settings()
    configure(settings)
    c = client(settings)
    name = settings.registered_model
    assert catalog.versions(c, name) == [] and catalog.audit_rows(c, name) == []
    gates = {"macro_f1": {"value": 0.9, "threshold": 0.8, "passed": True}}
    v1, v2 = _register(settings, c, gates), _register(settings, c, gates)
    move_alias(c, name, CHAMPION, v1, action="approve", reason="looks right", who="ml-lead")

    rows = catalog.versions(c, name)
    assert [r.version for r in rows] == [v2, v1]
    assert rows[1].aliases == [CHAMPION] and rows[0].aliases == []
    assert rows[1].gates_passed is True and rows[1].summary()["aliases"] == CHAMPION
    assert catalog.gate_rows(rows[1].gates) == [
        {"gate": "macro_f1", "value": "0.9", "threshold": "0.8", "passed": "True"}
    ]
    audit = catalog.audit_rows(c, name)
    assert audit[0]["action"] == "approve" and audit[0]["actor"] == "ml-lead" and audit[0]["to_version"] == v1
    assert [a["action"] for a in audit[1:]] == ["register", "register"]
    assert catalog.version_uri(name, v1) == f"models:/{name}/{v1}"


@pytest.mark.slow
def test_the_app_says_when_nothing_is_registered() -> None:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    assert at.title[0].value == "Inspect an image"
    assert any("No version of" in info.value for info in at.info)
