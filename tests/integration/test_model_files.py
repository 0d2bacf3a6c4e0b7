"""Loading a model never runs code from the model's files: the safe layout, refusals, weight hashes, repackaging.

One tiny simple_cnn checkpoint is trained per module; each test registers it in its own MLflow store (the `store`
fixture: SQLite under the test's STEELQC_HOME). Planted pickles would create a marker file if they were ever unpickled.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from steelqc.flows.evaluation import predict_images
from steelqc.flows.training import register_step
from steelqc.model_registry import packaging, promotion
from steelqc.model_registry.gates import GateReport, Verdict
from steelqc.tasks.config import Settings
from steelqc.tasks.evaluation.assess import Evaluation
from steelqc.tasks.model.train import TrainResult, train_model
from tests.helpers import LABELS, SHAPE, cfg, make_split

STEELQC = str(Path(sys.executable).with_name("steelqc"))
THRESHOLD = 0.4
FORBIDDEN_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle", ".py", ".pyc")


class Payload:
    """Unpickling this creates ``marker`` (harmless stand-in for ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (pathlib.Path.touch, (self.marker,))


def plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny trained checkpoint, its bundle and a few images (shared by the module)."""
    root = tmp_path_factory.mktemp("model-files")
    train_df, val_df = make_split(root / "train", 24, 1), make_split(root / "val", 12, 2)
    result = train_model(train_df, val_df, LABELS, cfg(epochs=1, max_train_batches=2), root / "ckpt", progress=False)
    spec = {"height": SHAPE[0], "width": SHAPE[1], "channels": 3}
    bundle = packaging.make_bundle("simple_cnn", LABELS, spec, THRESHOLD, weights_used=result.weights_used)
    bundle_path = root / "bundle.json"
    bundle_path.write_text(json.dumps(bundle))
    images = val_df["path"].tolist()[:4]
    reference = packaging.SteelDefectModel().load(result.best_checkpoint, bundle_path, "cpu")
    return {
        "checkpoint": Path(result.best_checkpoint),
        "bundle": bundle,
        "images": images,
        "proba": reference.predict_proba(pd.DataFrame({"path": images})),
    }


def register(settings: Settings, trained: dict, tmp_path: Path) -> str:
    """Register the shared checkpoint the way the training pipeline does (``register_step``)."""
    run_dir = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    run_dir.mkdir()
    with mlflow.start_run() as run:
        pass
    spec = trained["bundle"]["input_spec"]
    evaluation = Evaluation({"macro_f1": 0.9}, {}, {"threshold": THRESHOLD}, "simple_cnn", spec, LABELS)
    checkpoint = trained["checkpoint"]
    train = TrainResult(checkpoint, checkpoint, 1, 0.0, 1, False, [], "none (random init)", 0.0, "cpu")
    gates = GateReport({}, Verdict(passed=True, refused=False, reason="all gates passed"))
    return register_step.fn(str(run_dir), run.info.run_id, evaluation, train, gates, "fp", {})


def store_dir(c: Any, name: str, version: str) -> Path:
    """The version's folder in the artifact store itself (what an attacker with store access would edit)."""
    source = c.get_model_version(name, version).source  # models:/m-<id>: the logged model
    assert source.startswith("models:/m-")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source))


def no_marker(marker: Path) -> None:
    assert not marker.exists(), "a planted pickle was unpickled"


# ------------------------------------------------------------------------------------------------ (a) layout


def test_a_registered_version_holds_no_pickle_and_no_code(store, trained: dict, tmp_path: Path) -> None:
    settings, c = store
    name = settings.registered_model
    version = register(settings, trained, tmp_path)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    folders = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}
    assert not [f for f in files if f.lower().endswith(FORBIDDEN_SUFFIXES)], files
    assert "code" not in folders and folders <= {"data", "data/steelqc"}
    assert {"MLmodel", "data/steelqc/checkpoint.pt", "data/steelqc/bundle.json"} <= files
    assert files <= packaging.METADATA_FILES | packaging.MODEL_FILES
    conf = yaml.safe_load((root / "MLmodel").read_text())["flavors"]["python_function"]
    assert conf["loader_module"] == "steelqc.model_registry.packaging" and not conf.get("code")
    assert "python_model" not in conf and "cloudpickle_version" not in conf
    tags = c.get_model_version(name, version).tags
    assert tags["weights_sha256"] == packaging.sha256_file(root / "data/steelqc/checkpoint.pt")
    assert tags["weights_sha256"] == packaging.sha256_file(trained["checkpoint"])
    assert tags["bundle_sha256"] == packaging.sha256_file(root / "data/steelqc/bundle.json")
    assert json.loads((root / "data/steelqc/bundle.json").read_text())["weights_sha256"] == tags["weights_sha256"]

    promotion.move_alias(c, name, promotion.CHAMPION, version, action="promote", reason="test")
    model = packaging.load(f"models:/{name}@champion")
    assert model.threshold == THRESHOLD and model.label_space == LABELS
    np.testing.assert_allclose(model.predict_proba(pd.DataFrame({"path": trained["images"]})), trained["proba"])
    # MLflow's own loader still works on a safe version (through the loader module)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    out = pyfunc.predict(trained["images"])
    assert [Path(p).name for p in out["image"]] == [Path(p).name for p in trained["images"]]
    assert pyfunc.unwrap_python_model().label_space == LABELS


# ---------------------------------------------------------------------------------------------- (b) refusals


def _plant_pickle(copy: Path, marker: Path) -> str:
    plant_pickle(copy / "python_model.pkl", marker)
    return "python_model.pkl"


def _plant_python_file(copy: Path, marker: Path) -> str:
    (copy / "loader.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return "loader.py"


def _plant_code_folder(copy: Path, marker: Path) -> str:
    (copy / "code").mkdir()
    (copy / "code" / "payload.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    plant_pickle(copy / "code" / "payload.pkl", marker)
    mlmodel = yaml.safe_load((copy / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["code"] = "code"
    (copy / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return "code/"


def _edit_flavor(copy: Path, **changes: Any) -> None:
    mlmodel = yaml.safe_load((copy / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"].update(changes)
    (copy / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def _plant_loader_os(copy: Path, marker: Path) -> str:
    _edit_flavor(copy, loader_module="os")
    return "loader_module is 'os'"


def _plant_python_model_key(copy: Path, marker: Path) -> str:
    plant_pickle(copy / "data" / "steelqc" / "model.pickle", marker)
    _edit_flavor(copy, python_model="data/steelqc/model.pickle", cloudpickle_version="3.1.3")
    return "python_model"


def _plant_legacy_look(copy: Path, marker: Path) -> str:
    plant_pickle(copy / "python_model.pkl", marker)
    _edit_flavor(copy, loader_module="mlflow.pyfunc.model", python_model="python_model.pkl")
    return "steelqc registry repackage"


PLANTS = {
    "pickle": _plant_pickle,
    "python-file": _plant_python_file,
    "code-folder": _plant_code_folder,
    "loader-os": _plant_loader_os,
    "python-model-key": _plant_python_model_key,
    "legacy-look": _plant_legacy_look,
}
OUR_LOADER = ("pickle", "python-file", "code-folder", "python-model-key")


@pytest.mark.parametrize("plant", PLANTS)
def test_b_planted_code_is_refused_and_never_run(store, trained: dict, tmp_path: Path, plant: str) -> None:
    settings, c = store
    version = register(settings, trained, tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(store_dir(c, settings.registered_model, version), copy)
    packaging.load(str(copy))  # the untouched copy loads
    marker = tmp_path / "marker"
    named = PLANTS[plant](copy, marker)
    with pytest.raises(packaging.UnsafeModel) as refused:
        packaging.load(str(copy))
    assert named in str(refused.value)
    no_marker(marker)
    if plant in OUR_LOADER:  # MLflow's loader honours the MLmodel; while it names ours, ours refuses too
        with pytest.raises(packaging.UnsafeModel):
            mlflow.pyfunc.load_model(str(copy))
        no_marker(marker)


# ---------------------------------------------------------------------------------------------- (c) hashes


def _nudge_one_weight(checkpoint: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    first = next(iter(state["model_state"]))
    state["model_state"][first].view(-1)[0] += 1e-3
    torch.save(state, checkpoint)


def test_c_a_changed_weight_is_refused_naming_both_hashes(store, trained: dict, tmp_path: Path) -> None:
    settings, c = store
    name = settings.registered_model
    version = register(settings, trained, tmp_path)
    promotion.move_alias(c, name, promotion.CHAMPION, version, action="promote", reason="test")
    root = store_dir(c, name, version)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    weights = root / "data" / "steelqc" / "checkpoint.pt"
    recorded = c.get_model_version(name, version).tags["weights_sha256"]
    _nudge_one_weight(weights)
    changed = packaging.sha256_file(weights)
    assert changed != recorded
    for uri in (f"models:/{name}@champion", f"models:/{name}/{version}"):
        with pytest.raises(packaging.UnsafeModel, match=r"checkpoint\.pt") as refused:
            packaging.load(uri)
        assert recorded in str(refused.value) and changed in str(refused.value)
        assert "weights_sha256 tag" in str(refused.value)
    with pytest.raises(packaging.UnsafeModel, match=r"checkpoint\.pt"):
        predict_images(f"models:/{name}@champion", [Path(p) for p in trained["images"]], settings)
    # a plain directory is checked against bundle.json's record (corruption only)
    _nudge_one_weight(copy / "data" / "steelqc" / "checkpoint.pt")
    with pytest.raises(packaging.UnsafeModel, match=r"checkpoint\.pt: SHA-256 .* recorded in bundle.json"):
        packaging.load(str(copy))


def test_c_a_changed_bundle_is_refused(store, trained: dict, tmp_path: Path) -> None:
    """bundle.json holds the threshold: lowering the crack rate by editing it is tampering too."""
    settings, c = store
    name = settings.registered_model
    version = register(settings, trained, tmp_path)
    bundle = store_dir(c, name, version) / "data" / "steelqc" / "bundle.json"
    bundle.write_text(json.dumps({**json.loads(bundle.read_text()), "threshold": 1.0}))
    with pytest.raises(packaging.UnsafeModel, match=r"bundle\.json: SHA-256"):
        packaging.load(f"models:/{name}/{version}")


# ------------------------------------------------------------------------------------------ (d) old versions


class OldSteelDefectModel(mlflow.pyfunc.PythonModel):
    """The pre-change packaging: a cloudpickled PythonModel next to the checkpoint and bundle."""

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> Any:
        return model_input


def register_legacy(settings: Settings, c: Any, trained: dict, tmp_path: Path) -> str:
    """Log and register a version the way steelqc did before: ``python_model=`` (a pickle), no hash tags."""
    bundle_path = Path(tempfile.mkdtemp(dir=tmp_path)) / "bundle.json"
    bundle_path.write_text(json.dumps(trained["bundle"]))
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=OldSteelDefectModel(),
            artifacts={"checkpoint": str(trained["checkpoint"]), "bundle": str(bundle_path)},
            pip_requirements=["steelqc"],
        )
    tags = {"gates_passed": "true", "fingerprint": "fp", "threshold": str(THRESHOLD)}
    version, _ = promotion.register_version(c, settings.registered_model, info.model_uri, run.info.run_id, tags)
    return str(version.version)


def test_d_old_versions_are_refused_then_repackaged_without_unpickling(store, trained: dict, tmp_path: Path) -> None:
    settings, c = store
    name = settings.registered_model
    v1, v2 = register_legacy(settings, c, trained, tmp_path), register_legacy(settings, c, trained, tmp_path)
    promotion.move_alias(c, name, promotion.CHAMPION, v1, action="promote", reason="first")
    promotion.move_alias(c, name, promotion.CHAMPION, v2, action="promote", reason="second")
    promotion.move_alias(c, name, promotion.CHALLENGER, v2, action="challenger", reason="second")
    old_dirs = {v: store_dir(c, name, v) for v in (v1, v2)}
    assert all((d / "python_model.pkl").is_file() for d in old_dirs.values())
    marker = tmp_path / "marker"
    for d in old_dirs.values():
        plant_pickle(d / "python_model.pkl", marker)

    with pytest.raises(packaging.LegacyModel, match=f"steelqc registry repackage {v2}"):
        packaging.load(f"models:/{name}@champion")
    with pytest.raises(packaging.LegacyModel, match="repackage"):
        predict_images(f"models:/{name}@champion", [Path(p) for p in trained["images"]], settings)
    no_marker(marker)

    env = {**os.environ, "STEELQC_HOME": str(settings.home)}
    proc = subprocess.run([STEELQC, "registry", "repackage", "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    done = {r["from_version"]: r["version"] for r in out["repackaged"]}
    assert set(done) == {v1, v2} and len(set(done.values())) == 2
    v3, v4 = done[v1], done[v2]
    assert out["aliases"] == {promotion.CHAMPION: v4, promotion.CHALLENGER: v4}
    no_marker(marker)

    model = packaging.load(f"models:/{name}@champion")
    np.testing.assert_allclose(model.predict_proba(pd.DataFrame({"path": trained["images"]})), trained["proba"])
    assert model.threshold == THRESHOLD
    for old, new in ((v1, v3), (v2, v4)):
        assert c.get_model_version(name, old).tags["superseded_by"] == new
        tags = c.get_model_version(name, new).tags
        assert tags["repackaged_from"] == old and tags["gates_passed"] == "true" and tags["fingerprint"] == "fp"
        assert tags["weights_sha256"] == packaging.sha256_file(trained["checkpoint"])
        assert c.get_model_version(name, new).run_id == c.get_model_version(name, old).run_id
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{new}"))
        assert not [p for p in root.rglob("*") if p.name.lower().endswith(FORBIDDEN_SUFFIXES)]
    moves = [e for e in promotion.history(c, name) if e["action"] == "repackage"]
    assert sorted((e["alias"], e["from_version"], e["to_version"]) for e in moves) == [
        (promotion.CHALLENGER, v2, v4),
        (promotion.CHAMPION, v2, v4),
    ]
    assert all(e["repackaged_from"] == v2 for e in moves)

    again = packaging.repackage(c, name, v1)  # re-running reuses the repackaged version
    assert again["version"] == v3 and len(c.search_model_versions(f"name='{name}'")) == 4
    # rollback follows the repackaging: the earlier champion v1 comes back as v3, never as the pickled v1
    assert promotion.rollback(c, name, reason="test")["to_version"] == v3
    no_marker(marker)
