"""A model version's drift and novelty reference: stored with the version's MLflow run, read back for the monitor.

The training pipeline logs :class:`steelqc.tasks.features.Reference` (``reference.json``, ``features.csv``,
``arrays.npz``: never a pickle) under the run's ``reference/`` artifacts, so a monitor always compares new images
with its own champion's reference. A version registered before references existed has none: the monitor says so
and, when the version's run folder still holds its train/val splits and their images, computes one with the
version's own model and logs it to the run (so it is computed once).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from steelqc.model_registry.packaging import SteelDefectModel, registered_version
from steelqc.tasks.config import Settings
from steelqc.tasks.data.datasets import InputSpec
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.split import load_split
from steelqc.tasks.features import REFERENCE_FILES, Reference, build_reference
from steelqc.tasks.model.inference import load_model, select_device

log = logging.getLogger(__name__)

REFERENCE_PATH = "reference"
STORED, COMPUTED = "stored", "computed from run data"


class MissingReference(ValueError):
    """A version without a drift reference that cannot be computed either (the message says what to do)."""


def log_reference(client: MlflowClient, run_id: str, reference: Reference) -> None:
    """Log ``reference`` under the run's ``reference/`` artifacts."""
    with tempfile.TemporaryDirectory(prefix="steelqc-reference-") as tmp:
        reference.save(Path(tmp))
        client.log_artifacts(run_id, tmp, REFERENCE_PATH)
    client.set_tag(run_id, "steelqc.reference", REFERENCE_PATH)


def stored_reference(client: MlflowClient, run_id: str) -> Reference | None:
    """The run's stored reference, or None when it has none."""
    try:
        names = {Path(f.path).name for f in client.list_artifacts(run_id, REFERENCE_PATH)}
    except MlflowException:
        return None
    if not set(REFERENCE_FILES) <= names:
        return None
    with tempfile.TemporaryDirectory(prefix="steelqc-reference-") as tmp:
        local = client.download_artifacts(run_id, REFERENCE_PATH, tmp)
        return Reference.load(Path(local))


def _run_splits(client: MlflowClient, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame] | str:
    """The run's train and val splits when their images are still there, else why not."""
    run_dir = client.get_run(run_id).data.tags.get("steelqc.run_dir")
    if not run_dir:
        return "its run records no run folder"
    try:
        train, val = load_split(run_dir, "train"), load_split(run_dir, "val")
    except (OSError, ValueError) as exc:
        return f"its splits in {run_dir} cannot be read ({exc})"
    missing = [p for p in pd.concat([train, val])["path"] if not Path(p).is_file()]
    if missing:
        return f"{len(missing)} of its training images are gone (e.g. {missing[0]})"
    return train, val


def champion_reference(
    client: MlflowClient, settings: Settings, model: SteelDefectModel, version: ModelVersion
) -> tuple[Reference, str]:
    """The reference of ``version`` (loaded as ``model``): stored, or computed from the run's data and logged.

    Returns the reference and its source (``stored`` or ``computed from run data``); raises
    :class:`MissingReference` when there is none and it cannot be computed."""
    name = f"{version.name} v{version.version}"
    if not version.run_id:
        raise MissingReference(f"{name} has no MLflow run: no drift reference; retrain to get one")
    stored = stored_reference(client, version.run_id)
    if stored is not None:
        return stored, STORED
    splits = _run_splits(client, version.run_id)
    if isinstance(splits, str):
        raise MissingReference(
            f"{name} was registered without a drift reference and none can be computed: {splits}. "
            "Retrain (steelqc train) so the new version carries its reference."
        )
    log.warning("%s has no drift reference (registered before references existed): computing one", name)
    reference = build_reference(
        model.model,
        model.architecture,
        model.spec,
        model.label_space,
        model.threshold,
        *splits,
        quantile=settings.novelty_quantile,
        batch_size=settings.monitor_batch_size,
        device=model.device,
    )
    log_reference(client, version.run_id, reference)
    return reference, COMPUTED


def reference_for_run(run_dir: Path, checkpoint: Path, threshold: float | None, settings: Settings) -> Reference:
    """The reference of a training run: its best checkpoint on its own train and val splits."""
    device = select_device()
    model, meta = load_model(checkpoint, device)
    return build_reference(
        model,
        meta["model_name"],
        InputSpec.from_dict(meta["input_spec"]),
        LabelSpace.from_dict(meta["label_space"]),
        threshold,
        load_split(run_dir, "train"),
        load_split(run_dir, "val"),
        quantile=settings.novelty_quantile,
        batch_size=settings.monitor_batch_size,
        device=device,
    )


def reference_of_uri(client: MlflowClient, model_uri: str) -> Reference | None:
    """The stored reference of the registered version ``model_uri`` names (None for other URIs or without one)."""
    version = registered_version(model_uri, client)
    if version is None or not version.run_id:
        return None
    return stored_reference(client, version.run_id)
