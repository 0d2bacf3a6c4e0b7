"""The registered model: weights, ``bundle.json`` and an ``MLmodel`` whose loader is this module. Loading a model
never runs code from the model's files.

A version holds exactly::

    MLmodel                        pyfunc flavor: loader_module model_registry.packaging, data data/steelqc
    data/steelqc/checkpoint.pt     the best checkpoint: tensors and plain values, read with weights_only=True
    data/steelqc/bundle.json       architecture, label space, input spec, critical threshold, weights_sha256
    conda.yaml, python_env.yaml, requirements.txt, registered_model_meta, ...   MLflow's metadata, never executed

No pickle (MLflow's ``python_model.pkl`` is a cloudpickle: unpickling it runs whatever it says), no Python file,
no ``code/`` folder (models-from-code executes a ``.py`` copied into the model). The version carries the SHA-256 of
its weights and of bundle.json as tags (``weights_sha256``, ``bundle_sha256``, set at registration).

The input spec says how images are decoded: ``image_channels`` 1 (grey, replicated to the model's channels) or 3
(RGB); a bundle written before that field existed has none and is grey, and a bundle that disagrees with its
checkpoint on it is refused.

:func:`load` (``steelqc predict`` / ``evaluate``, the champion comparison) never calls ``mlflow.pyfunc.load_model``,
which would honour whatever the MLmodel says: it resolves the URI to a directory, refuses one holding anything but
the files above or an MLmodel naming another loader (:class:`UnsafeModel`), checks the hashes and rebuilds the
network from bundle.json and the checkpoint itself. Versions registered before this format (``python_model.pkl``)
are refused with :class:`LegacyModel`; :func:`repackage` rebuilds them from their weight files, never unpickling.

``mlflow.pyfunc.load_model(uri)`` still works on a safe version through :func:`_load_pyfunc`: ``predict`` takes image
paths (a list, or a DataFrame with a ``path`` column) and returns one record per image (``image``, ``label``,
``label_id``, ``probabilities``, ``critical``); ``unwrap_python_model()`` gives the :class:`SteelDefectModel`
(``label_space``, ``threshold``, ``spec``, the torch ``model``).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import torchvision
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from steelqc.model_registry import policy, promotion
from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.metrics import decide
from steelqc.tasks.fileio import sha256_file
from steelqc.tasks.model.distill import DistillationError, Teacher
from steelqc.tasks.model.inference import load_model as load_checkpoint
from steelqc.tasks.model.inference import predict_proba, select_device

log = logging.getLogger(__name__)

BUNDLE_VERSION = 1
LOADER_MODULE = "steelqc.model_registry.packaging"
# the same module under its name before the steelqc namespace (versions registered then); steelqc never imports it
LOADER_MODULES = (LOADER_MODULE, "model_registry.packaging")
DATA_DIR = "steelqc"
DATA_SUBPATH = f"data/{DATA_DIR}"
WEIGHTS_FILE = "checkpoint.pt"
BUNDLE_FILE = "bundle.json"
SAFE_ARTIFACT = "model-safe"
WEIGHTS_TAG, BUNDLE_TAG = "weights_sha256", "bundle_sha256"
REPACKAGED_FROM = "repackaged_from"
SUPERSEDED_BY = promotion.SUPERSEDED_BY
# MLflow's own files next to MLmodel: read by MLflow tooling as data, never executed by a load
METADATA_FILES = frozenset(
    {
        "MLmodel",
        "conda.yaml",
        "python_env.yaml",
        "requirements.txt",
        "input_example.json",
        "serving_input_example.json",
        "registered_model_meta",
    }
)
MODEL_FILES = frozenset({f"{DATA_SUBPATH}/{WEIGHTS_FILE}", f"{DATA_SUBPATH}/{BUNDLE_FILE}"})
MODEL_FOLDERS = frozenset({"data", DATA_SUBPATH})
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".so", ".pth")
CODE_FLAVOR_KEYS = ("python_model", "cloudpickle_version", "artifacts", "model_code_path")


class UnsafeModel(ValueError):
    """A model steelqc refuses to load: files or an MLmodel that could run code, or weights that changed."""


class LegacyModel(UnsafeModel):
    """A version in the old format (a pickled ``python_model.pkl``, or no hash tag): repackage it, never unpickle it."""


@dataclass(frozen=True)
class ModelFiles:
    """The two files a checked model directory is rebuilt from."""

    root: Path
    weights: Path
    bundle: Path


@dataclass(frozen=True)
class PackagedModel:
    """A logged model and the hashes of its files (the registration tags)."""

    uri: str
    weights_sha256: str
    bundle_sha256: str

    def tags(self) -> dict[str, str]:
        return {WEIGHTS_TAG: self.weights_sha256, BUNDLE_TAG: self.bundle_sha256}


class SteelDefectModel:
    """Checkpoint + bundle -> predictions with the safety-first decision rule."""

    def load(self, checkpoint: Path, bundle_path: Path, device: str | None = None) -> SteelDefectModel:
        """Load from files (weights with ``weights_only=True``; also usable for a checkpoint on disk)."""
        self.bundle = check_bundle_version(json.loads(Path(bundle_path).read_text()), Path(bundle_path))
        self.device = device or select_device()
        self.model, self.meta = load_checkpoint(Path(checkpoint), self.device)
        self.architecture = self.bundle["architecture"]
        if self.meta.get("model_name") != self.architecture:
            held = self.meta.get("model_name")
            raise UnsafeModel(f"{BUNDLE_FILE} says {self.architecture!r} but {Path(checkpoint).name} holds {held!r}")
        self.label_space = LabelSpace.from_dict(self.bundle["label_space"])
        self.spec = InputSpec.from_dict(self.bundle["input_spec"])
        trained = InputSpec.from_dict(self.meta.get("input_spec") or {}).image_channels
        if trained != self.spec.image_channels:
            raise UnsafeModel(
                f"{BUNDLE_FILE} decodes images with image_channels {self.spec.image_channels} but "
                f"{Path(checkpoint).name} was trained with {trained}"
            )
        self.threshold = self.bundle.get("threshold")
        return self

    def predict_proba(self, frame: pd.DataFrame, corruption: Any = None, batch_size: int = 32) -> np.ndarray:
        """Class probabilities (N x C, output-index order) for a frame with ``image_id`` and ``path``."""
        frame = frame.copy()
        if "image_id" not in frame:
            frame["image_id"] = frame["path"].map(lambda p: Path(p).name)
        return predict_proba(
            self.model,
            frame,
            self.label_space,
            self.spec,
            batch_size=batch_size,
            device=self.device,
            corruption=corruption,
        )

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Predicted output indices under the calibrated critical threshold."""
        return decide(proba, self.label_space.critical_index, self.threshold)

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> pd.DataFrame:
        """One record per image (``context`` is unused; kept for callers written against MLflow's PythonModel)."""
        frame = _as_frame(model_input)
        proba = self.predict_proba(frame)
        chosen = self.decide(proba)
        names = self.label_space.names
        critical = self.label_space.critical_index
        return pd.DataFrame(
            {
                "image": frame["path"].astype(str).tolist(),
                "label": [names[i] for i in chosen],
                "label_id": [self.label_space.id_of(i) for i in chosen],
                "probabilities": [dict(zip(names, map(float, row), strict=True)) for row in proba],
                "critical": [bool(i == critical) for i in chosen],
            }
        )


class PyfuncModel:
    """What :func:`_load_pyfunc` gives MLflow: ``predict(model_input, params)``; ``python_model`` for unwrapping."""

    def __init__(self, model: SteelDefectModel) -> None:
        self.python_model = model

    def predict(self, model_input: Any, params: dict | None = None) -> pd.DataFrame:
        return self.python_model.predict(None, model_input, params)


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        if "path" not in model_input:
            if model_input.shape[1] == 1:
                return model_input.set_axis(["path"], axis=1)
            raise ValueError("input DataFrame needs a 'path' column")
        return model_input
    if isinstance(model_input, str | Path):
        model_input = [model_input]
    return pd.DataFrame({"path": [str(p) for p in model_input]})


def check_bundle_version(bundle: dict, path: Path) -> dict:
    """``bundle`` when this steelqc reads its ``bundle_version`` (:data:`BUNDLE_VERSION`; an older one is migrated
    first, should there ever be one); a bundle from a newer steelqc, or without a version, is refused naming both
    versions and what to do."""
    found = bundle.get("bundle_version") if isinstance(bundle, dict) else None
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise UnsafeModel(
            f"{path}: no valid bundle_version ({found!r}): not written by steelqc's packaging; {_repackage_hint(None)}"
        )
    if found > BUNDLE_VERSION:
        raise UnsafeModel(
            f"{path}: bundle_version {found} was written by a newer steelqc; this one ({_steelqc_version()}) reads "
            f"bundle_version {BUNDLE_VERSION} and older: upgrade steelqc to load this model"
        )
    return bundle  # version 1 is the first: nothing older to migrate


def _steelqc_version() -> str:
    try:
        return importlib.metadata.version("steelqc")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown version"


def make_bundle(architecture: str, label_space: Any, input_spec: dict, threshold: float | None, **extra: Any) -> dict:
    """The bundle.json a version carries next to its checkpoint (the input spec with every field, so
    ``image_channels`` is written out even for grey data)."""
    return {
        "bundle_version": BUNDLE_VERSION,
        "architecture": architecture,
        "label_space": label_space.to_dict(),
        "input_spec": InputSpec.from_dict(input_spec).to_dict(),
        "threshold": threshold,
        **extra,
    }


def _requirements() -> list[str]:
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        "steelqc",
    ]


def log_pyfunc(checkpoint: Path, bundle: dict, name: str = "model") -> PackagedModel:
    """Log checkpoint + bundle (with the weights' SHA-256) as a pyfunc model in the active MLflow run.

    The MLmodel's loader is this module (``loader_module``); nothing is pickled and no code is copied.
    """
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / DATA_DIR
        stage.mkdir()
        weights = stage / WEIGHTS_FILE
        shutil.copyfile(checkpoint, weights)
        weights_sha256 = sha256_file(weights)
        bundle_path = stage / BUNDLE_FILE
        bundle_path.write_text(json.dumps({**bundle, WEIGHTS_TAG: weights_sha256}, indent=2, default=str))
        info = mlflow.pyfunc.log_model(
            name=name, loader_module=LOADER_MODULE, data_path=str(stage), pip_requirements=_requirements()
        )
        return PackagedModel(info.model_uri, weights_sha256, sha256_file(bundle_path))


# ------------------------------------------------------------------------------------------ checking a model


def _read_mlmodel(root: Path) -> dict:
    """The MLmodel of ``root`` as plain data (``yaml.safe_load``: no object construction)."""
    path = root / "MLmodel"
    if path.is_symlink() or not path.is_file():
        raise UnsafeModel(f"{root} holds no MLmodel file: not a steelqc model")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise UnsafeModel(f"{path} has no flavors")
    return doc


def _is_legacy(mlmodel: dict) -> bool:
    """The pre-hash format: MLflow's PythonModel loader with a pickled ``python_model``."""
    conf = mlmodel["flavors"].get("python_function") or {}
    return "python_model" in conf and conf.get("loader_module") == "mlflow.pyfunc.model"


def _repackage_hint(version: str | None) -> str:
    return f"run `steelqc registry repackage {version or 'VERSION'}` to rebuild it from its weights"


def _flavor_problems(mlmodel: dict) -> list[str]:
    """What in the MLmodel would make MLflow run code other than this module."""
    flavors = mlmodel["flavors"]
    problems = [f"MLmodel has a {name!r} flavor" for name in flavors if name != "python_function"]
    conf = flavors.get("python_function")
    if not isinstance(conf, dict):
        return [*problems, "MLmodel has no python_function flavor"]
    if conf.get("loader_module") not in LOADER_MODULES:
        problems.append(f"MLmodel's loader_module is {conf.get('loader_module')!r}, not {LOADER_MODULE!r}")
    problems += [f"MLmodel's pyfunc flavor has {key!r}" for key in CODE_FLAVOR_KEYS if key in conf]
    if conf.get("code"):
        problems.append(f"MLmodel's pyfunc flavor adds code to the import path ({conf['code']!r})")
    if conf.get("data") != DATA_SUBPATH:
        problems.append(f"MLmodel's data is {conf.get('data')!r}, not {DATA_SUBPATH!r}")
    return problems


def _describe(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    if name.lower().endswith(PICKLE_SUFFIXES):
        return f"a pickle file {rel} (unpickling runs code)"
    if name.lower().endswith(CODE_SUFFIXES):
        return f"a Python file {rel}"
    return f"an unexpected file {rel}"


def _file_problems(root: Path) -> list[str]:
    """Every file or folder of ``root`` outside the allow-list (symlinks are never followed nor allowed)."""
    problems = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        for name in sorted(dirs):
            rel = (base / name).relative_to(root).as_posix()
            if (base / name).is_symlink():
                problems.append(f"a symbolic link {rel}")
            elif rel not in MODEL_FOLDERS:
                kind = "a code/ folder" if name == "code" else "an unexpected folder"
                problems.append(f"{kind} {rel}/")
        dirs[:] = [d for d in dirs if (base / d).relative_to(root).as_posix() in MODEL_FOLDERS]
        for name in sorted(files):
            rel = (base / name).relative_to(root).as_posix()
            if (base / name).is_symlink():
                problems.append(f"a symbolic link {rel}")
            elif rel not in METADATA_FILES and rel not in MODEL_FILES:
                problems.append(_describe(rel))
    missing = sorted(rel for rel in MODEL_FILES if not (root / rel).is_file())
    return problems + [f"no {rel}" for rel in missing]


def check_model_dir(root: Path | str, version: str | None = None) -> ModelFiles:
    """The weights and bundle of a model directory that holds only what a steelqc version may hold.

    Raises :class:`LegacyModel` for the old pickled format and :class:`UnsafeModel` (naming every offending file
    or MLmodel entry) for anything else outside the allow-list. Reads the MLmodel as data; runs nothing.
    """
    root = Path(root)
    if not root.is_dir():
        raise UnsafeModel(f"{root} is not a model directory")
    mlmodel = _read_mlmodel(root)
    if _is_legacy(mlmodel):
        which = f"version {version}" if version else str(root)
        raise LegacyModel(
            f"{which} is in the old format with a pickled python_model.pkl, which steelqc never loads: "
            f"{_repackage_hint(version)}"
        )
    problems = _flavor_problems(mlmodel) + _file_problems(root)
    if problems:
        raise UnsafeModel(f"refusing to load the model in {root}: " + "; ".join(problems))
    return ModelFiles(root, root / DATA_SUBPATH / WEIGHTS_FILE, root / DATA_SUBPATH / BUNDLE_FILE)


def _check_hash(files: ModelFiles, path: Path, expected: str | None, source: str) -> None:
    """Refuse ``path`` (named as it lies in the model, ``files.root``) unless its SHA-256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise UnsafeModel(
            f"{path.name}: SHA-256 {actual} does not match {expected} recorded in {source}: the file was changed "
            f"or corrupted; refusing to load {files.root / DATA_SUBPATH / path.name}"
        )


def verify_registered(version: ModelVersion, files: ModelFiles) -> None:
    """The weights (and bundle.json) against the version's ``weights_sha256`` (``bundle_sha256``) tags."""
    where = f"the {{}} tag of {version.name} v{version.version}"
    expected = version.tags.get(WEIGHTS_TAG)
    if not expected:
        raise LegacyModel(
            f"{version.name} v{version.version} has no {WEIGHTS_TAG} tag (registered before weights were "
            f"hashed): {_repackage_hint(version.version)}"
        )
    _check_hash(files, files.weights, expected, where.format(WEIGHTS_TAG))
    if version.tags.get(BUNDLE_TAG):
        _check_hash(files, files.bundle, version.tags[BUNDLE_TAG], where.format(BUNDLE_TAG))


def verify_against_bundle(files: ModelFiles) -> None:
    """The weights against the hash bundle.json records. This only detects corruption (whoever can change the
    weights can change bundle.json too); for a registered version the registry tag is the authority."""
    recorded = json.loads(files.bundle.read_text()).get(WEIGHTS_TAG)
    if not recorded:
        raise UnsafeModel(f"{files.bundle} records no {WEIGHTS_TAG}")
    _check_hash(files, files.weights, recorded, files.bundle.name)


def _parse_models_uri(model_uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, version, alias) of ``models:/name/3`` or ``models:/name@alias``; None for any other URI."""
    if not model_uri.startswith("models:/"):
        return None
    rest = model_uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return name, None, alias
    parts = rest.split("/")
    return (parts[0], parts[1], None) if len(parts) == 2 else None


def registered_version(model_uri: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The registry version behind a ``models:/name/N`` or ``models:/name@alias`` URI (None for other URIs)."""
    parsed = _parse_models_uri(model_uri)
    if parsed is None:
        return None
    name, version, alias = parsed
    client = client or MlflowClient()
    if alias is not None:
        return client.get_model_version_by_alias(name, alias)
    if version is None or not version.isdigit():
        raise ValueError(f"{model_uri}: name a version (models:/{name}/3) or an alias (models:/{name}@champion)")
    return client.get_model_version(name, version)


def _local_dir(model_uri: str) -> Path:
    """A local directory holding the model's files (the store's own folder for a local store)."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))


def _private_copy(files: ModelFiles, into: Path) -> ModelFiles:
    """Copies that nobody else can swap between the hash check and the load."""
    weights, bundle = into / WEIGHTS_FILE, into / BUNDLE_FILE
    shutil.copyfile(files.weights, weights)
    shutil.copyfile(files.bundle, bundle)
    return ModelFiles(files.root, weights, bundle)


def load(model_uri: str, device: str | None = None) -> SteelDefectModel:
    """Load a steelqc model (``models:/name@alias``, ``models:/name/N``, ``runs:/...``, a directory) for inference.

    Reads only the weights (``weights_only=True``) and bundle.json, after :func:`check_model_dir` and the hash
    check: against the version's ``weights_sha256``/``bundle_sha256`` tags for ``models:/`` URIs, else against the
    hash in bundle.json (which only detects corruption). Raises :class:`UnsafeModel` / :class:`LegacyModel`.
    """
    version = registered_version(model_uri)
    source = f"models:/{version.name}/{version.version}" if version is not None else model_uri
    files = check_model_dir(_local_dir(source), version.version if version is not None else None)
    with tempfile.TemporaryDirectory(prefix="steelqc-model-") as tmp:
        private = _private_copy(files, Path(tmp))
        if version is not None:
            verify_registered(version, private)
        else:
            verify_against_bundle(private)
        model = SteelDefectModel().load(private.weights, private.bundle, device)
    log.info("loaded %s (%s) from %s", model_uri, model.architecture, files.root)
    return model


def pinned_uri(model_uri: str, client: MlflowClient | None = None) -> str:
    """``models:/name@alias`` -> ``models:/name/N``, the version the alias names now (an alias may move while a run
    uses it); other URIs unchanged. A URI that names no version raises :class:`DistillationError` (bad input)."""
    try:
        version = registered_version(model_uri, client)
    except MlflowException as exc:
        raise DistillationError(f"teacher {model_uri}: {exc.message}") from exc
    return f"models:/{version.name}/{version.version}" if version is not None else model_uri


def load_teacher(model_uri: str) -> Teacher:
    """A distillation teacher, loaded as every model is (:func:`load`: weights only, hashes checked), on the CPU
    (training moves it to its device)."""
    try:
        model = load(model_uri, device="cpu")
    except MlflowException as exc:
        raise DistillationError(f"teacher {model_uri}: {exc.message}") from exc
    return Teacher(model.model, model.spec, model.label_space, model_uri)


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> PyfuncModel:
    """MLflow's entry point (``mlflow.pyfunc.load_model``): the same directory check, the hash in bundle.json."""
    data = Path(data_path)
    if data.parent.name != "data" or data.name != DATA_DIR:
        raise UnsafeModel(f"{data} is not a steelqc model's {DATA_SUBPATH}")
    files = check_model_dir(data.parent.parent)
    with tempfile.TemporaryDirectory(prefix="steelqc-model-") as tmp:
        private = _private_copy(files, Path(tmp))
        verify_against_bundle(private)
        return PyfuncModel(SteelDefectModel().load(private.weights, private.bundle))


# ------------------------------------------------------------------------------------------------ repackaging


def _inside(root: Path, rel: Any, what: str) -> Path:
    """``root/rel`` when it is a regular file inside ``root`` (no symlink, no ``..``)."""
    if not isinstance(rel, str) or not rel:
        raise UnsafeModel(f"the old MLmodel names no {what}")
    path = root / rel
    if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(root.resolve()):
        raise UnsafeModel(f"the old model's {what} {rel!r} is not a regular file inside {root}")
    return path


def old_weight_files(root: Path) -> ModelFiles:
    """Checkpoint and bundle.json of an old-format version (as its MLmodel names them), or of a safe-format one.

    Nothing else of the directory is opened: ``python_model.pkl`` is never read.
    """
    mlmodel = _read_mlmodel(root)
    if _is_legacy(mlmodel):
        artifacts = mlmodel["flavors"]["python_function"].get("artifacts") or {}
        weights = _inside(root, (artifacts.get("checkpoint") or {}).get("path"), "checkpoint")
        bundle = _inside(root, (artifacts.get("bundle") or {}).get("path"), "bundle")
        return ModelFiles(root, weights, bundle)
    return check_model_dir(root)


def _weights_only_bundle(files: ModelFiles) -> dict:
    """The old bundle, checked against the checkpoint (loaded with ``weights_only=True``, on the CPU)."""
    _model, meta = load_checkpoint(files.weights, "cpu")
    bundle = json.loads(files.bundle.read_text())
    if not isinstance(bundle, dict) or bundle.get("architecture") != meta.get("model_name"):
        raise UnsafeModel(f"the old bundle.json does not describe the checkpoint ({meta.get('model_name')!r})")
    return {k: v for k, v in bundle.items() if k != WEIGHTS_TAG}


def _repackaged_as(client: MlflowClient, name: str, version: str) -> ModelVersion | None:
    found = client.search_model_versions(f"name='{name}' and tags.{REPACKAGED_FROM}='{version}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _log_into_run(run_id: str | None, files: ModelFiles, bundle: dict, label: str) -> PackagedModel:
    """Log the safe model into the old version's run (a new run when it had none)."""
    run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=f"repackage-{label}")
    with run:
        return log_pyfunc(files.weights, bundle, name=SAFE_ARTIFACT)


def _register_repackaged(client: MlflowClient, name: str, old: ModelVersion, timeout_s: float) -> ModelVersion:
    """Log the old version's weights as a safe model into its run and register that (reused when it exists)."""
    old_version = str(old.version)
    existing = _repackaged_as(client, name, old_version)
    if existing is not None:
        return existing
    files = old_weight_files(_local_dir(f"models:/{name}/{old_version}"))
    with tempfile.TemporaryDirectory(prefix="steelqc-repackage-") as tmp:
        private = _private_copy(files, Path(tmp))
        packaged = _log_into_run(old.run_id, private, _weights_only_bundle(private), f"{name}-v{old_version}")
    keep = {k: v for k, v in old.tags.items() if k not in (SUPERSEDED_BY, WEIGHTS_TAG, BUNDLE_TAG)}
    new, _ = promotion.register_version(
        client,
        name,
        packaged.uri,
        old.run_id,
        {**keep, REPACKAGED_FROM: old_version, **packaged.tags()},
        timeout_s,
        reason=f"v{old_version} repackaged from its weight files (no pickle)",
        existing=f"name='{name}' and tags.{REPACKAGED_FROM}='{old_version}'",
    )
    return new


def _move_aliases(client: MlflowClient, name: str, old: str, new: str, timeout_s: float) -> list[dict]:
    """Every alias on ``old`` to ``new`` through the audited move (action ``repackage``); the audit events."""
    events = []
    for alias, held in promotion.aliases(client, name).items():
        if held != old:
            continue
        events.append(
            promotion.move_alias(
                client,
                name,
                alias,
                new,
                action="repackage",
                reason=f"v{old} repackaged as v{new} (same weights, no pickle)",
                check=policy.unchanged(old, alias=alias),
                require_gates=False,  # the alias keeps serving the same weights
                timeout_s=timeout_s,
                extra={REPACKAGED_FROM: old},
            )
        )
    return events


def repackage(client: MlflowClient, name: str, version: str, timeout_s: float = 120.0) -> dict:
    """Rebuild an old-format version from its weight files as a new safe version; aliases follow (audited).

    Downloads the old version, reads only its checkpoint (``weights_only=True``) and bundle.json, logs a
    ``model-safe`` model into the same MLflow run, registers it with the old tags plus ``repackaged_from`` and the
    hash tags, moves every alias the old version held through :func:`promotion.move_alias` (action
    ``repackage``) and tags the old version ``superseded_by``. Safe to re-run: an existing repackaged version is
    reused. A version already in the safe format with its hash tag is left as it is.
    """
    old = client.get_model_version(name, str(version))
    old_version = str(old.version)
    if old.tags.get(WEIGHTS_TAG):
        check_model_dir(_local_dir(f"models:/{name}/{old_version}"), old_version)
        return {"from_version": old_version, "version": old_version, "repackaged": False, "aliases_moved": []}
    new = _register_repackaged(client, name, old, timeout_s)
    new_version = str(new.version)
    events = _move_aliases(client, name, old_version, new_version, timeout_s)
    client.set_model_version_tag(name, old_version, SUPERSEDED_BY, new_version)
    moved = [e["alias"] for e in events]
    log.info("%s v%s repackaged as v%s; aliases moved: %s", name, old_version, new_version, moved)
    return {
        "from_version": old_version,
        "version": new_version,
        "repackaged": True,
        "weights_sha256": new.tags.get(WEIGHTS_TAG),
        "aliases_moved": moved,
        "events": events,
    }


def repackage_all(client: MlflowClient, name: str, timeout_s: float = 120.0) -> list[dict]:
    """:func:`repackage` every version without a ``weights_sha256`` tag that was not repackaged yet.

    A version that cannot be repackaged (no checkpoint, unreadable weights) is reported with ``error``.
    """
    results = []
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    for version in versions:
        if version.tags.get(WEIGHTS_TAG) or version.tags.get(SUPERSEDED_BY):
            continue
        try:
            results.append(repackage(client, name, version.version, timeout_s))
        except (UnsafeModel, MlflowException, OSError, ValueError, KeyError, RuntimeError) as exc:
            log.error("cannot repackage %s v%s: %s", name, version.version, exc)
            results.append({"from_version": version.version, "error": f"{type(exc).__name__}: {exc}"})
    return results
